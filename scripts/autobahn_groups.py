"""Per-group counts of an Autobahn report, as a Markdown table (for docs/conformance.md).

Usage: python scripts/autobahn_groups.py REPORT_DIR
"""

from __future__ import annotations

import collections
import json
import sys
from pathlib import Path

NAMES = {
    "1": "framing",
    "2": "pings and pongs",
    "3": "reserved bits",
    "4": "opcodes",
    "5": "fragmentation",
    "6": "UTF-8 handling",
    "7": "close handling",
    "9": "limits and performance",
    "10": "miscellaneous (auto-fragmentation)",
    "12": "permessage-deflate, payloads",
    "13": "permessage-deflate, parameters",
}
COLUMNS = ("OK", "NON-STRICT", "INFORMATIONAL", "UNIMPLEMENTED", "FAILED")


def main(report: Path) -> int:
    index = json.loads((report / "index.json").read_text())
    (results,) = index.values()
    groups: dict[str, collections.Counter[str]] = collections.defaultdict(collections.Counter)
    for case, result in results.items():
        groups[case.split(".")[0]][result["behavior"]] += 1
    print("| group | cases | " + " | ".join(COLUMNS) + " |")
    print("|---|---|" + "---|" * len(COLUMNS))
    total: collections.Counter[str] = collections.Counter()
    for group in sorted(groups, key=int):
        counts = groups[group]
        total.update(counts)
        row = " | ".join(str(counts.get(c, 0)) for c in COLUMNS)
        print(f"| {group} {NAMES.get(group, '')} | {sum(counts.values())} | {row} |")
    row = " | ".join(str(total.get(c, 0)) for c in COLUMNS)
    print(f"| **all** | {sum(total.values())} | {row} |")
    return 0


if __name__ == "__main__":
    sys.exit(main(Path(sys.argv[1])))
