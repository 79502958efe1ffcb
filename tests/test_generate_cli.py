"""`oig generate` through the real entry point: help, usage errors, bad configs, a dry run, a run."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from fake_openai import FakeOpenAI
from test_generate_run import write_config

from oig.cli import main

ROOT = Path(__file__).resolve().parents[1]


def test_help(capsys):
    assert main(["generate", "--help"]) == 0
    out = capsys.readouterr().out
    for flag in ("--config", "--out", "--limit", "--seed", "--allow-local-sources", "--dry-run", "--budget-usd",
                 "--emit-slice"):
        assert flag in out


def test_usage_errors_exit_2(capsys, tmp_path):
    assert main(["generate", "--out", str(tmp_path)]) == 2
    assert "--config" in capsys.readouterr().err
    assert main(["generate", "--config", "x.yaml", "--out", str(tmp_path), "--budget-usd", "free"]) == 2
    assert "expected an amount in USD" in capsys.readouterr().err
    assert main(["generate", "--config", "x.yaml", "--out", str(tmp_path), "--limit", "0"]) == 2


def test_a_bad_config_is_reported_with_its_line(tmp_path, capsys):
    cfg = tmp_path / "gen.yaml"
    cfg.write_text("instructions:\n  - link: rows.jsonl\nmodels:\n  - model: a\n    temperatur: 1\n")
    assert main(["generate", "--config", str(cfg), "--out", str(tmp_path / "out")]) == 1
    err = capsys.readouterr().err
    assert f"{cfg}:5:5: error: unknown key 'temperatur' at models[0]; did you mean 'temperature'?" in err
    assert "Traceback" not in err
    assert main(["generate", "--config", str(tmp_path / "missing.yaml"), "--out", str(tmp_path / "out")]) == 1
    assert "cannot read the config" in capsys.readouterr().err


def test_a_local_source_without_the_flag_is_a_clear_error(tmp_path, capsys):
    cfg = write_config(tmp_path, "http://127.0.0.1:9")
    assert main(["generate", "--config", str(cfg), "--out", str(tmp_path / "out")]) == 1
    err = capsys.readouterr().err
    assert "oig generate: error: instructions[0] rows.jsonl: links must be https URLs; local paths need " \
           "--allow-local-sources" in err


def test_dry_run_prints_the_plan(tmp_path, capsys):
    cfg = write_config(tmp_path, "http://127.0.0.1:9", judges="")
    assert main(["generate", "--config", str(cfg), "--out", str(tmp_path / "out"), "--allow-local-sources",
                 "--dry-run", "--limit", "3"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("Plan for 3 instructions") and "Total: 6 calls to make" in out
    assert not (tmp_path / "out").exists()


def test_a_run_lists_what_it_wrote(tmp_path, capsys):
    with FakeOpenAI() as srv:
        cfg = write_config(tmp_path, srv.base_url, judges="")
        assert main(["generate", "--config", str(cfg), "--out", str(tmp_path / "out"), "--allow-local-sources"]) == 0
    captured = capsys.readouterr()
    assert f"wrote {tmp_path / 'out' / 'records.jsonl'} (4 lines)" in captured.out
    assert "oig generate: 4 records, 8 answers (0 failed)" in captured.err


def test_the_cli_module_and_config_stay_light():
    code = ("import sys, oig.cli.generate, oig.generate.config, oig.generate.run, oig.generate.clients; "
            "heavy = {'torch', 'transformers', 'trl', 'datasets', 'huggingface_hub', 'together'} & set(sys.modules); "
            "print(sorted(heavy))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60,
                         env={"PYTHONPATH": str(ROOT / "scripts"), "PATH": ""})
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"


def test_a_run_where_every_call_failed_exits_1(tmp_path, capsys):
    with FakeOpenAI(status={"alpha": 401, "beta-long": 401}) as srv:
        cfg = write_config(tmp_path, srv.base_url, judges="")
        assert main(["generate", "--config", str(cfg), "--out", str(tmp_path / "out"), "--allow-local-sources"]) == 1
    err = capsys.readouterr().err
    assert "every model call failed; the first: alpha: HTTP 401: the model alpha cannot answer this" in err
    assert (tmp_path / "out" / "records.jsonl").read_text().count("\n") == 4


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_the_generate_demo_script_runs_end_to_end(tmp_path):
    """scripts/generate_demo.sh (make generate-demo): two `oig serve` processes, a reward model, a slice."""
    out = tmp_path / "demo"
    env = {**os.environ, "PYTHON": sys.executable, "PYTHONPATH": str(ROOT / "scripts"),
           "GEN_DEMO_PORT_A": str(_free_port()), "GEN_DEMO_PORT_B": str(_free_port())}
    done = subprocess.run(["bash", str(ROOT / "scripts" / "generate_demo.sh"), str(out)], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=280)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    assert "valid: 0 error(s)" in done.stdout + done.stderr
    assert (out / "records.jsonl").read_text().count("\n") == 8
    assert (out / "data" / "generated.yaml").is_file()
    # the trap stopped both servers
    for port in (env["GEN_DEMO_PORT_A"], env["GEN_DEMO_PORT_B"]):
        import socket

        with socket.socket() as s:
            assert s.connect_ex(("127.0.0.1", int(port))) != 0
