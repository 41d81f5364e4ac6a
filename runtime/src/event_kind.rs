//! The kinds of events the kernel writes. Plugins' own events are `plugin.<id>.<kind>`
//! (strings: any plugin may name its own); these are the kernel's, one enum so no module
//! spells them by hand.

/// An event the kernel writes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum EventKind {
    RecordCreated,
    RecordUpdated,
    RecordDeleted,
    StageChanged,
    LeadScored,
    PluginFailed,
    /// The dispatcher cut a chain of automations that went too deep.
    LoopStopped,
    /// The dispatcher stopped a chain that used up its run budget.
    BudgetExhausted,
    /// A connection's refresh was refused: the tenant's admin must connect again.
    ConnectionExpired,
}

impl EventKind {
    /// Events about records, which automations and plugins react to.
    pub const RECORD: [EventKind; 6] = [
        EventKind::RecordCreated,
        EventKind::RecordUpdated,
        EventKind::RecordDeleted,
        EventKind::StageChanged,
        EventKind::LeadScored,
        EventKind::PluginFailed,
    ];

    /// Events the kernel writes when it stops a chain of automations: plugins may subscribe
    /// to them (to report), template automations may not (they would extend it).
    pub const CHAIN: [EventKind; 2] = [EventKind::LoopStopped, EventKind::BudgetExhausted];

    /// Events about a tenant's connections to external services.
    pub const CONNECTION: [EventKind; 1] = [EventKind::ConnectionExpired];

    pub fn as_str(self) -> &'static str {
        match self {
            EventKind::RecordCreated => "record.created",
            EventKind::RecordUpdated => "record.updated",
            EventKind::RecordDeleted => "record.deleted",
            EventKind::StageChanged => "stage.changed",
            EventKind::LeadScored => "lead.scored",
            EventKind::PluginFailed => "plugin.failed",
            EventKind::LoopStopped => "automation.loop_stopped",
            EventKind::BudgetExhausted => "automation.budget_exhausted",
            EventKind::ConnectionExpired => "connection.expired",
        }
    }

    /// The kernel's event of this name, if it is one.
    pub fn parse(kind: &str) -> Option<EventKind> {
        Self::RECORD
            .into_iter()
            .chain(Self::CHAIN)
            .chain(Self::CONNECTION)
            .find(|k| k.as_str() == kind)
    }

    /// Whether this is one of [`EventKind::RECORD`].
    pub fn is_record(self) -> bool {
        Self::RECORD.contains(&self)
    }

    /// `kinds`' names, comma-separated, for messages.
    pub fn names(kinds: &[EventKind]) -> String {
        kinds
            .iter()
            .map(|k| k.as_str())
            .collect::<Vec<_>>()
            .join(", ")
    }
}

impl std::fmt::Display for EventKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl PartialEq<EventKind> for str {
    fn eq(&self, other: &EventKind) -> bool {
        self == other.as_str()
    }
}

impl PartialEq<EventKind> for String {
    fn eq(&self, other: &EventKind) -> bool {
        self == other.as_str()
    }
}

#[cfg(test)]
mod tests {
    use super::EventKind;

    #[test]
    fn names_round_trip() {
        for kind in EventKind::RECORD.into_iter().chain(EventKind::CHAIN) {
            assert_eq!(EventKind::parse(kind.as_str()), Some(kind));
        }
        assert_eq!(EventKind::parse("plugin.x.y"), None);
        assert!(EventKind::LeadScored.is_record());
        assert!(!EventKind::LoopStopped.is_record());
    }
}
