"""Results built by hand, rendered with no checkpoint read: renderers depend on results only."""

from __future__ import annotations

import json
import xml.etree.ElementTree as ET

from normcli.report.check_report import render_github, render_junit
from normcli.report.json import dumps
from normcli.results import RULES, CheckResult, RuleOutcome, Violation

BROKEN = Violation("N005", "max-tensor-linf", "w,1", 3.5, 2.0, "max|x| 3.5 > 2")
RESULT = CheckResult(
    checkpoint="model.safetensors",
    baseline=None,
    violations=(BROKEN,),
    rules=(
        RuleOutcome("N001", "nonfinite", 0.0, False, 0),
        RuleOutcome("N005", "max-tensor-linf", 2.0, False, 1),
    ),
    tensors=4,
    config=None,
)


def test_github_annotations_of_a_hand_built_result() -> None:
    assert render_github([RESULT]) == (
        "::error file=model.safetensors,title=normcli N005 max-tensor-linf::w,1: max|x| 3.5 > 2\n"
        "::notice title=normcli check::normcli check: FAILED model.safetensors, 1 violation "
        "(N005)\n"
    )


def test_junit_of_a_hand_built_result() -> None:
    suite = ET.fromstring(render_junit([RESULT])).find("testsuite")
    assert suite is not None and (suite.get("tests"), suite.get("failures")) == ("2", "1")
    failure = suite.find("testcase[@name='N005 max-tensor-linf']/failure")
    assert failure is not None and failure.text == "w,1: max|x| 3.5 > 2"
    assert RULES["max-tensor-linf"].summary in (failure.get("message") or "")


def test_json_of_a_hand_built_result() -> None:
    doc = json.loads(dumps([RESULT]))
    assert doc["schema"] == "normcli/check/v1" and doc["passed"] is False
    assert doc["violations"] == [
        {
            "code": "N005",
            "rule": "max-tensor-linf",
            "tensor": "w,1",
            "value": 3.5,
            "limit": 2.0,
            "message": "max|x| 3.5 > 2",
        }
    ]
