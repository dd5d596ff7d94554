"""`prunelab report DB_OR_DIR`: one HTML page (figures embedded) and its Markdown twin."""

from __future__ import annotations

import argparse


def cmd_report(args: argparse.Namespace) -> int:
    from prunelab.report_page import find_sources, write_report

    sources = find_sources(args.path)
    html_path, md_path = write_report(args.path, args.out)
    print(f"{len(sources.databases)} results database(s), {len(sources.reproductions)} "
          f"reproduction report(s)")
    print(f"wrote {html_path} and {md_path}")
    return 0


def register(subparsers) -> None:
    p = subparsers.add_parser("report", help="one HTML/Markdown page from sweeps and "
                              "reproductions")
    p.add_argument("path", metavar="DB_OR_DIR",
                   help="a results database, or a directory searched for databases (*.db) and "
                   "reproduction outputs (report.md + results.json)")
    p.add_argument("--out", help="HTML file to write (default DIR/report.html); the Markdown "
                   "twin goes beside it with .md")
    p.set_defaults(func=cmd_report)
