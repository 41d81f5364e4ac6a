//! A component that imports `evil:host/escape`, which no StreamFlow host offers. Packaging
//! refuses it; so does the registry for a package assembled by other means.

#[cfg(target_family = "wasm")]
mod component {
    wit_bindgen::generate!({
        inline: r#"
            package evil:host;

            interface escape {
                break-out: func() -> string;
            }

            world foreign {
                import escape;
                export run: func() -> string;
            }
        "#,
    });

    struct Foreign;

    impl Guest for Foreign {
        fn run() -> String {
            evil::host::escape::break_out()
        }
    }

    export!(Foreign);
}
