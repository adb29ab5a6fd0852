"""Capture the README's Dagster UI screenshots (run through scripts/screenshots.sh)."""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import yaml

REPO_ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO_ROOT))

from earnopt_assets_tests.integration.browser import headless_chromium  # noqa: E402
from earnopt_assets_tests.integration.ui_pages import show, switch_states, ui_pages  # noqa: E402
from earnopt_assets_tests.integration.webserver import running_webserver, write_daemonless_instance  # noqa: E402


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--data-dir", type=Path, default=None, help="earnopt data dir (default: a new temporary one)")
    parser.add_argument("--reuse", action="store_true", help="the data dir is already materialized: skip `earnopt demo`")
    parser.add_argument("--out", type=Path, default=REPO_ROOT / "docs" / "img")
    parser.add_argument("--partition", default="honeygain", help="earnings_model partition to show")
    parser.add_argument("--protocols", default=None,
                        help="comma-separated protocols to keep from the catalog (default: all; fewer train faster)")
    parser.add_argument("--days", type=int, default=90, help="days of telemetry the demo simulates")
    args = parser.parse_args()

    data_dir = (args.data_dir or Path(tempfile.mkdtemp(prefix="earnopt-screens-"))).resolve()
    home = data_dir / "dagster_home"
    catalog = Path(os.environ.get("EARNOPT_CATALOG", REPO_ROOT / "data" / "catalog.yaml")).resolve()
    if args.protocols and not args.reuse:
        keep = {name.strip() for name in args.protocols.split(",")}
        raw = yaml.safe_load(catalog.read_text())
        raw["protocols"] = [p for p in raw["protocols"] if p["name"] in keep]
        data_dir.mkdir(parents=True, exist_ok=True)
        catalog = data_dir / "catalog.yaml"
        catalog.write_text(yaml.safe_dump(raw, sort_keys=False))
    elif args.reuse and (data_dir / "catalog.yaml").exists():
        catalog = data_dir / "catalog.yaml"
    env = {**os.environ, "EARNOPT_DATA_DIR": str(data_dir), "DAGSTER_HOME": str(home), "EARNOPT_CATALOG": str(catalog)}
    if not args.reuse:
        write_daemonless_instance(home)
        print(f"==> earnopt demo into {data_dir}", flush=True)
        subprocess.run([sys.executable, "-m", "earnopt_assets.cli", "demo", "--data-dir", str(data_dir), "--days", str(args.days)], env=env, cwd=REPO_ROOT, check=False)

    args.out.mkdir(parents=True, exist_ok=True)
    with running_webserver(home, data_dir, catalog, data_dir / "webserver.log") as url, headless_chromium(2200, 1300) as page:
        for ui_page in ui_pages(args.partition):
            show(page, url, ui_page)
            if ui_page.running_switches:
                print(f"    switches: {switch_states(page, ui_page.running_switches)}")
            path = page.screenshot(args.out / ui_page.screenshot)
            print(f"==> {ui_page.name}: {path.relative_to(REPO_ROOT) if path.is_relative_to(REPO_ROOT) else path}", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
