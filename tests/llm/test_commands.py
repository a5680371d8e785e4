"""`mapd cache stats|clear` and `mapd ledger RUN_DIR` on a store filled through the loopback server."""

from __future__ import annotations

import asyncio

from typer.testing import CliRunner

from mapd.cli import app
from mapd.config import Price
from mapd.llm import Request, client_for, open_store, run_id
from mapd.testing.loopback import ScriptedReply

runner = CliRunner()


def fill(endpoint, run_dir) -> None:
    async def go():
        with open_store() as store:
            for stage in ["teach", "review"]:
                client = client_for(endpoint, store=store, run=run_id(run_dir), stage=stage)
                await client.complete_many([Request.user(f"q{i}") for i in range(4)])
                await client.aclose()

    asyncio.run(go())


def test_ledger_prints_totals_per_stage(make_teacher, tmp_path):
    fill(make_teacher(price=Price(input_per_mtok=1e5, output_per_mtok=0)), tmp_path / "run")
    result = runner.invoke(app, ["ledger", str(tmp_path / "run")])
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    teach = next(line for line in lines if line.startswith("teach"))
    review = next(line for line in lines if line.startswith("review"))
    assert teach.split()[1:5] == ["t", "4", "0", "0"]
    assert review.split()[1:5] == ["t", "4", "4", "0"]
    assert lines[-1].split()[:3] == ["total", "8", "4"]
    assert lines[-1].split()[-1] == "0.4000"  # 4 paid calls x 1 prompt token x $0.1


def test_ledger_shows_reasoning_tokens_cut_off_replies_and_estimated_usage(
    server, make_teacher, tmp_path
):
    replies = iter([ScriptedReply("Step 1: comp", "length", reasoning_tokens=30)] * 2)
    server.reply = lambda request: next(replies, ScriptedReply("ok", usage=False))
    fill(make_teacher(), tmp_path / "run")
    result = runner.invoke(app, ["ledger", str(tmp_path / "run")])
    lines = result.output.splitlines()
    assert lines[0].split()[-6:] == ["reasoning", "cut", "off", "timeouts", "cost", "$"]
    teach = next(line for line in lines if line.startswith("teach")).split()
    review = next(line for line in lines if line.startswith("review")).split()
    assert teach[-4:-1] == ["60", "2", "0"]  # reasoning tokens, cut off, timeouts
    assert review[-4:-1] == ["60", "2", "0"]  # the same replies, from the cache
    assert lines[-1].startswith("2 calls had no usage from their endpoint")


def test_ledger_of_an_unknown_run_is_a_user_error(tmp_path):
    from mapd.errors import MapdError

    result = runner.invoke(app, ["ledger", str(tmp_path)])  # a folder, but of no run
    assert isinstance(result.exception, MapdError)
    result = runner.invoke(app, ["ledger", str(tmp_path / "nothing")])
    assert result.exit_code == 2 and "does not exist; give a run folder" in result.output


def test_cache_stats_and_clear(make_teacher, tmp_path):
    fill(make_teacher(), tmp_path / "run")
    stats = runner.invoke(app, ["cache", "stats"])
    assert stats.exit_code == 0 and "4 cached replies" in stats.output
    assert "fake-model" in stats.output
    unasked = runner.invoke(app, ["cache", "clear"], input="y\n")  # no terminal to confirm at
    assert "pass --yes" in unasked.exception.hint
    typo = runner.invoke(app, ["cache", "clear", "--model", "fake-modle", "--yes"])
    assert "no cached replies of model 'fake-modle'" in typo.exception.message
    assert "models in the cache: fake-model" in typo.exception.hint
    cleared = runner.invoke(app, ["cache", "clear", "--yes"])
    assert "deleted 4 cached replies" in cleared.output
    assert "0 cached replies" in runner.invoke(app, ["cache", "stats"]).output


def test_help_texts_have_examples():
    for args in (["cache", "stats"], ["cache", "clear"], ["ledger"]):
        result = runner.invoke(app, [*args, "--help"])
        assert "Example: mapd" in result.output
