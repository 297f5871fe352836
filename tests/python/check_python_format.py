"""Checks that status writes are byte for byte what DataHub's Python executor would send.

Reads request bodies (one per line) on stdin. For each: the body, the key aspect and the aspect value
must equal Python's `json.dumps` of themselves (separators, escaping, ensure_ascii); a completion
report's summary dict must equal `pprint.pformat(..., width=150, sort_dicts=False)`; its
"Ingestion Report" section must equal `json.dumps(json.loads(serializedValue), indent=2)`.
Prints "ok N" or the first difference, and exits 1 on a difference.
"""
import ast
import json
import pprint
import sys

bodies = [line for line in sys.stdin.read().splitlines() if line]
for n, body in enumerate(bodies):
    def fail(msg):
        print(f"body {n}: {msg}")
        sys.exit(1)

    obj = json.loads(body)
    if json.dumps(obj) != body:
        fail("the body is not json.dumps output")
    proposal = obj["proposal"]
    for part in (proposal["entityKeyAspect"]["value"], proposal["aspect"]["value"]):
        if json.dumps(json.loads(part)) != part:
            fail(f"an aspect value is not json.dumps output: {part[:200]}")
    value = json.loads(proposal["aspect"]["value"])
    report = value.get("report") or ""
    if report.startswith("~~~~ Execution Summary"):
        head = report.split("\n\n", 1)[0]
        lines = head.split("\n", 2)
        summary = ast.literal_eval(lines[2])
        expected = pprint.pformat(summary, width=150, sort_dicts=False)
        if expected != lines[2]:
            fail(f"the summary differs from pprint:\n{expected}\n---\n{lines[2]}")
        structured = value.get("structuredReport")
        if structured:
            section = "~~~~ Ingestion Report ~~~~\n" + json.dumps(json.loads(structured["serializedValue"]), indent=2) + "\n\n"
            if section not in report:
                fail("the Ingestion Report section differs from json.dumps(indent=2)")
print("ok", len(bodies))
