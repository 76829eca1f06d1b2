"""The suite where optional pieces are missing, shown by hiding them (``FASTCONV_HIDE``, see conftest.py) in
a pytest run of its own: the tests needing torch, hypothesis or mnist1d skip with the reason, the others
run and pass, collection does not break; and a backend that CI requires (``FASTCONV_REQUIRE_BACKENDS``) is
a failure where it is missing, not a skip."""
import os
import subprocess
import sys
import xml.etree.ElementTree as ET

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _pytest(tmp_path, env, *tests):
    """``{test id: (outcome, message)}`` of a pytest run of ``tests`` with ``env`` added."""
    report = tmp_path / "report.xml"
    command = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", f"--junitxml={report}",
               *[os.path.join(REPO, "tests", test) for test in tests]]
    if "hypothesis" in env.get("FASTCONV_HIDE", ""):
        command[3:3] = ["-p", "no:hypothesispytest"]  # its plugin ships with it: absent where it is
    env = {**os.environ, "FASTCONV_HIDE": "", "FASTCONV_REQUIRE_BACKENDS": "", **env}  # CI sets the latter
    run = subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert report.exists(), run.stdout + run.stderr
    outcomes = {}
    for case in ET.parse(report).iter("testcase"):  # a module skipped or broken at collection: no classname
        module = case.get("classname").rsplit(".", 1)[-1] or case.get("name").rsplit(".", 1)[-1]
        name = module if not case.get("classname") else f"{module}::{case.get('name')}"
        result = next(iter(case), None)
        outcomes[name] = ("passed", "") if result is None else (result.tag, f"{result.get('message')} {result.text}")
    return outcomes


def test_without_optional_packages_the_tests_needing_them_skip(tmp_path):
    """torch, hypothesis and mnist1d hidden: skips with reasons, the other tests of the same modules pass."""
    outcomes = _pytest(tmp_path, {"FASTCONV_HIDE": "torch,hypothesis,mnist1d"},
                       "test_shapes.py", "test_im2col_cython.py",
                       "test_properties.py::test_conv_translation_equivariance",
                       "test_properties.py::test_max_pool_invariant_to_shifts_within_a_window",
                       "test_data.py::test_mnist1d_rejects_unknown_arguments", "test_data.py::test_loader_errors",
                       "test_train.py::test_outputs", "test_train.py::test_bad_configs",
                       "test_train.py::test_every_setting_has_a_resume_rule")
    assert not {name: result for name, result in outcomes.items() if result[0] in ("failure", "error")}
    for name in ("test_properties::test_conv_translation_equivariance[numpy]",
                 "test_im2col_cython::test_im2col_matches_reference"):
        assert outcomes[name][0] == "skipped" and "needs hypothesis" in outcomes[name][1]
    assert outcomes["test_shapes::test_conv_output_size"][0] == "skipped"
    assert "PyTorch" in outcomes["test_shapes::test_same_padding_matches_torch[3-1]"][1]
    assert "mnist1d package" in outcomes["test_data::test_mnist1d_rejects_unknown_arguments"][1]
    assert "mnist1d package" in outcomes["test_train::test_outputs"][1]
    ran = [name for name, result in outcomes.items() if result[0] == "passed"]
    for name in ("test_shapes::test_receptive_field_is_the_support_of_an_impulse_response[layers0]",
                 "test_shapes::test_pool_spec_default_stride_is_kernel", "test_im2col_cython::test_empty_batch",
                 "test_properties::test_max_pool_invariant_to_shifts_within_a_window[1]",
                 "test_train::test_every_setting_has_a_resume_rule"):
        assert name in ran
    assert len(ran) > 25


def test_a_missing_backend_skips_unless_it_is_required(tmp_path):
    hidden = {"FASTCONV_HIDE": "fastconv._cy"}  # as if the Cython extensions had not been built
    outcome, message = _pytest(tmp_path, hidden, "test_im2col_cython.py")["test_im2col_cython"]
    assert outcome == "skipped" and "not built" in message
    required = {**hidden, "FASTCONV_REQUIRE_BACKENDS": "numba,cython"}
    outcome, message = _pytest(tmp_path, required, "test_im2col_cython.py")["test_im2col_cython"]
    assert outcome == "error" and "FASTCONV_REQUIRE_BACKENDS=numba,cython requires it" in message
