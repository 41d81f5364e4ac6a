#!/usr/bin/env python3
"""What a flood of list requests costs the node in memory, with and without the bounds.

Usage: scripts/list-memory.py [path/to/streamflow]   (default target/release/streamflow)

For each configuration it starts `streamflow serve --demo` on a fresh SQLite file, stores
200 contacts as large as the record limit allows, then sends 8 concurrent `?limit=200`
list requests and reports the page size and the server's resident memory before and after.
The "unbounded" row approximates the server before the limits existed: a record limit just
under the 1 MiB body limit and a list budget larger than any page.
"""
import concurrent.futures, json, os, subprocess, sys, tempfile, time, urllib.request

BINARY = sys.argv[1] if len(sys.argv) > 1 else "target/release/streamflow"
CONFIGS = [
    ("unbounded (record 1 MiB, no page budget)",
     {"STREAMFLOW_RECORD_LIMIT": "1040000", "STREAMFLOW_LIST_RESPONSE_BYTES": "1000000000"}),
    ("defaults (record 256 KiB, page 4 MiB)", {}),
]


def run(port, extra):
    work = tempfile.mkdtemp()
    env = dict(os.environ, STREAMFLOW_LISTEN=f"127.0.0.1:{port}",
               STREAMFLOW_DATABASE_URL=f"sqlite://{work}/list-memory.db",
               STREAMFLOW_DATA_DIR=f"{work}/data", STREAMFLOW_DISPATCHER="0",
               STREAMFLOW_BUNDLED_PLUGINS="0", **extra)
    server = subprocess.Popen([BINARY, "serve", "--demo"], env=env,
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    base = f"http://127.0.0.1:{port}"

    def call(path, body=None, token=None):
        headers = {"content-type": "application/json"}
        if token:
            headers["authorization"] = f"Bearer {token}"
        data = None if body is None else json.dumps(body).encode()
        with urllib.request.urlopen(urllib.request.Request(base + path, data, headers),
                                    timeout=1200) as response:
            return response.read()

    def rss_mb():
        with open(f"/proc/{server.pid}/status") as status:
            line = next(l for l in status if l.startswith("VmRSS"))
        return int(line.split()[1]) // 1024

    try:
        for _ in range(600):
            try:
                call("/health")
                break
            except OSError:
                time.sleep(0.2)
        token = json.loads(call("/api/auth/login", {"tenant": "acme-hvac",
                                "email": "owner@acme-hvac.demo",
                                "password": "streamflow-demo"}))["access_token"]
        size = int(extra.get("STREAMFLOW_RECORD_LIMIT", 256 * 1024)) - 64
        for i in range(200):
            call("/api/records/contact", {"data": {"name": f"c{i}", "notes": "n" * size}}, token)
            print(f"\r  stored {i + 1}/200 records", end="", file=sys.stderr)
        print(file=sys.stderr)
        before = rss_mb()
        with concurrent.futures.ThreadPoolExecutor(8) as pool:
            pages = list(pool.map(lambda _: len(call("/api/records/contact?limit=200",
                                                     token=token)), range(8)))
        time.sleep(0.5)
        return pages[0], before, rss_mb()
    finally:
        server.terminate()
        server.wait()


print("| configuration | one page | RSS before | RSS after 8 concurrent lists |")
print("|---|---|---|---|")
for n, (name, extra) in enumerate(CONFIGS):
    print(f"running: {name}", file=sys.stderr)
    page, before, after = run(18_300 + n, extra)
    print(f"| {name} | {page / 1e6:.1f} MB | {before} MB | {after} MB |")
