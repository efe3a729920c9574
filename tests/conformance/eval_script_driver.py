"""Reference side of tests/conformance/test_eval_script_oracle.py; runs in the swebench 4.1.0 venv.

Reads a JSON list of SWE-bench rows (path in argv[1]) and prints, per instance_id, the eval script swebench 4.x's
`make_test_spec(row)` writes and the name of its log parser for the row's repository.

`make_test_spec` also builds the environment script, which downloads requirements.txt / environment.yml from
GitHub at the row's environment_setup_commit; those two downloaders are replaced by functions returning "" (no
network here, and the eval script does not depend on them).
"""

import json
import sys

import swebench
import swebench.harness.test_spec.python as python_spec
from swebench.harness.log_parsers import MAP_REPO_TO_PARSER
from swebench.harness.test_spec.test_spec import make_test_spec


def _no_download(*args, **kwargs):
    return ""


def main():
    assert swebench.__version__.startswith("4."), swebench.__version__
    python_spec.get_requirements = _no_download
    python_spec.get_environment_yml = _no_download
    with open(sys.argv[1], encoding="utf-8") as handle:
        rows = json.load(handle)
    out = {}
    for row in rows:
        out[row["instance_id"]] = {
            "eval_script": make_test_spec(row).eval_script,
            "parser": MAP_REPO_TO_PARSER[row["repo"]].__name__,
        }
    json.dump({"swebench": swebench.__version__, "rows": out}, sys.stdout)


if __name__ == "__main__":
    main()
