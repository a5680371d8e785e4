"""`mapd push` on a finished tiny run: the dry run's two folders, and the upload at the HTTP level.

The run is made once per module by the scripted classroom with a tiny in-process student
(about 10 s); the uploads go to `mapd.testing.hub_server`, a loopback Hub, through the real
`huggingface_hub` client pointed at it with HF_ENDPOINT.
"""

from __future__ import annotations

import asyncio
import json
import shutil
import sys
from pathlib import Path

import pytest
from tests.stages.scripted_classroom import reply, write_config
from tests.stages.test_full_loop import in_process
from tests.stages.train.toy_run import build_tiny_model

from mapd import cli
from mapd.config import load_config
from mapd.stages.pipeline import run_pipeline
from mapd.testing.hub_server import HubServer
from mapd.testing.loopback import LoopbackServer

KEY = "sk-test-0123456789abcdef-not-a-real-key"
TOKEN = "hf_test_token_abcdef0123456789"


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory) -> Path:
    """A run through eval whose teacher `alice` reads its key from MAPD_TEST_KEY."""
    tmp = tmp_path_factory.mktemp("push-run")
    student = build_tiny_model(tmp / "tiny")
    mp = pytest.MonkeyPatch()
    mp.setenv("MAPD_HOME", str(tmp / "home"))
    mp.setenv("MAPD_TEST_KEY", KEY)
    try:
        with LoopbackServer(reply=reply) as server:
            config = write_config(tmp, server.base_url)
            overrides = in_process(str(student), 2, "teachers.0.api_key_env=MAPD_TEST_KEY")
            asyncio.run(run_pipeline(load_config(config, overrides)))
    finally:
        mp.undo()
    return tmp / "run"


@pytest.fixture
def push(monkeypatch, capsys):
    """`mapd push ARGS...` as the command line runs it: (exit code, stdout and stderr)."""
    monkeypatch.setenv("MAPD_TEST_KEY", KEY)
    monkeypatch.setenv("HF_TOKEN", TOKEN)

    def run(*args: str) -> tuple[int, str]:
        monkeypatch.setattr(sys, "argv", ["mapd", "push", *args])
        with pytest.raises(SystemExit) as exit_:
            cli.main()
        captured = capsys.readouterr()
        return int(exit_.value.code or 0), captured.out + captured.err

    return run


def files_under(folder: Path) -> dict[str, bytes]:
    return {
        p.relative_to(folder).as_posix(): p.read_bytes()
        for p in sorted(folder.rglob("*"))
        if p.is_file() and p.name != ".mapd-push"
    }


def test_dry_run_writes_what_datasets_peft_and_the_hub_read(finished_run, tmp_path, push):
    import datasets
    from huggingface_hub import ModelCard
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    code, said = push(
        str(finished_run), "--repo", "org/tiny", "--dry-run", "--output", str(tmp_path)
    )
    assert code == 0, said
    assert "nothing uploaded" in said

    examples = datasets.load_dataset(str(tmp_path / "data"), split="train")
    train = (finished_run / "dataset" / "train.jsonl").read_text().splitlines()
    assert len(examples) == len(train) > 0
    assert set(examples["kind"]) == {"feedback", "rationale"}
    decisions = datasets.load_dataset(str(tmp_path / "data"), "decisions", split="train")
    assert len(decisions) == len((finished_run / "decisions.jsonl").read_text().splitlines())
    rejected = [d for d in decisions if not d["accepted"]]
    assert rejected and all(d["teacher"] == "carol" for d in rejected)
    assert all(r["reviewer"] != d["teacher"] for d in decisions for r in d["reviews"])

    card = (tmp_path / "data" / "README.md").read_text()
    assert "| carol | `carol-model` | 7 | 0 | 0% |" in card
    assert "## Funnel" in card and "api_key_env: MAPD_TEST_KEY" in card

    base_dir = json.loads((finished_run / "student" / "manifest.json").read_text())["base_model"]
    base = AutoModelForCausalLM.from_pretrained(base_dir)
    model = PeftModel.from_pretrained(base, str(tmp_path / "model"))
    assert model.peft_config["default"].peft_type.value == "LORA"

    data = ModelCard.load(tmp_path / "model" / "README.md").data
    trained = json.loads((finished_run / "eval" / "trained" / "metrics.json").read_text())
    assert data.base_model == base_dir
    assert data.library_name == "peft"
    assert data.datasets == ["org/tiny-data"]
    index = data.to_dict()["model-index"][0]["results"][0]
    accuracy = next(m for m in index["metrics"] if m["type"] == "accuracy")
    assert accuracy["value"] == trained["accuracy"]
    assert accuracy["args"]["questions"] == trained["n"]
    assert not (tmp_path / "model" / "training_args.bin").exists()

    written = [*files_under(tmp_path / "data").values(), *files_under(tmp_path / "model").values()]
    assert not any(KEY.encode() in b or TOKEN.encode() in b for b in written)


def test_push_commits_the_dry_run_files_and_a_second_push_uploads_nothing(
    finished_run, tmp_path, push, monkeypatch
):
    import huggingface_hub.constants

    dry = tmp_path / "dry"
    code, _ = push(str(finished_run), "--repo", "org/tiny", "--dry-run", "--output", str(dry))
    assert code == 0
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)
    with HubServer(token=TOKEN) as hub:
        monkeypatch.setenv("HF_ENDPOINT", hub.url)
        first, said_first = push(str(finished_run), "--repo", "org/tiny", "--private")
        second, said_second = push(str(finished_run), "--repo", "org/tiny")
    assert first == 0, said_first
    assert "dataset org/tiny-data: committed" in said_first
    assert hub.repos["dataset/org/tiny-data"] == files_under(dry / "data")
    assert hub.repos["model/org/tiny"] == files_under(dry / "model")
    assert second == 0, said_second
    assert said_second.count("up to date, nothing uploaded") == 2
    assert len(hub.commits) == 2  # one per repo, none from the second push


def test_a_changed_card_is_the_only_file_pushed_again(finished_run, tmp_path, push, monkeypatch):
    import huggingface_hub.constants

    run = tmp_path / "run"
    shutil.copytree(finished_run, run)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)
    with HubServer(token=TOKEN) as hub:
        monkeypatch.setenv("HF_ENDPOINT", hub.url)
        assert push(str(run), "--repo", "org/tiny")[0] == 0
        metrics = run / "eval" / "trained" / "metrics.json"
        metrics.write_text(json.dumps(json.loads(metrics.read_text()) | {"accuracy": 0.5}))
        code, said = push(str(run), "--repo", "org/tiny")
    assert code == 0, said
    assert hub.commits[-1] == ("model/org/tiny", ["README.md"])
    assert "dataset org/tiny-data: up to date" in said


def test_a_run_without_a_student_pushes_the_dataset_only(finished_run, tmp_path, push):
    run = tmp_path / "run"
    shutil.copytree(finished_run, run, ignore=shutil.ignore_patterns("student"))
    code, said = push(
        str(run), "--repo", "org/tiny", "--dry-run", "--output", str(tmp_path / "out")
    )
    assert code == 2
    assert "no trained student" in said and "the dataset only" in said
    assert (tmp_path / "out" / "data" / "README.md").exists()
    assert not (tmp_path / "out" / "model").exists()


def test_output_never_replaces_what_push_did_not_write(finished_run, tmp_path, push):
    """`--output .` in a project with its own data/ deleted it; an output inside the run
    folder could replace student/."""
    mine = tmp_path / "project" / "data" / "mine.csv"
    mine.parent.mkdir(parents=True)
    mine.write_text("a,b\n")
    args = (str(finished_run), "--repo", "org/tiny", "--dry-run", "--output")
    code, said = push(*args, str(tmp_path / "project"))
    assert code == 2 and "push did not write" in said and mine.read_text() == "a,b\n"
    code, said = push(*args, str(finished_run / "student"))
    assert code == 2 and "inside the run folder" in said
    out = tmp_path / "again"
    assert push(*args, str(out))[0] == 0 and push(*args, str(out))[0] == 0  # its own: replaced


def test_a_student_trained_on_another_dataset_is_not_pushed(finished_run, tmp_path, push):
    run = tmp_path / "run"
    shutil.copytree(finished_run, run)
    with (run / "dataset" / "train.jsonl").open("a") as fh:  # built again after training
        fh.write((run / "dataset" / "train.jsonl").read_text().splitlines()[0] + "\n")
    code, said = push(str(run), "--repo", "org/tiny", "--dry-run", "--output", str(tmp_path / "o"))
    assert code == 2 and "not trained on this folder's dataset" in said
    assert not (tmp_path / "o").exists()


@pytest.mark.parametrize(
    ("args", "unset", "says"),
    [
        (["--repo", "tiny"], [], "is not ORG/NAME"),
        (["--repo", "org/tiny"], ["HF_TOKEN"], "no Hub token: the variable HF_TOKEN is not set"),
        (["--repo", "org/tiny", "--token-env", "MY_HUB"], [], "variable MY_HUB is not set"),
        (["--repo", "org/tiny", "--dry-run"], [], "--dry-run and --output go together"),
    ],
)
def test_mistakes_are_one_line_and_exit_2(finished_run, push, monkeypatch, args, unset, says):
    for name in unset:
        monkeypatch.delenv(name)
    code, said = push(str(finished_run), *args)
    assert code == 2
    assert says in said and len(said.strip().splitlines()) == 2  # the error and its hint


def test_a_refused_token_and_an_unreachable_hub_are_one_line(finished_run, push, monkeypatch):
    import huggingface_hub.constants

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)
    with HubServer(token="another-token") as hub:
        monkeypatch.setenv("HF_ENDPOINT", hub.url)
        code, said = push(str(finished_run), "--repo", "org/tiny")
        url = hub.url
    assert code == 2
    assert "refused the token in HF_TOKEN" in said
    monkeypatch.setenv("HF_ENDPOINT", url)  # the server is gone: nothing listens there
    code, said = push(str(finished_run), "--repo", "org/tiny")
    assert code == 2
    assert "could not reach the Hub" in said


def test_eval_results_name_the_hub_benchmark_with_the_trained_accuracy(finished_run):
    import yaml
    from huggingface_hub import parse_eval_result_entries

    from mapd.push.facts import read_facts
    from mapd.push.model import eval_results_yaml

    facts = read_facts(finished_run)
    assert eval_results_yaml(facts) is None  # a local jsonl task names no Hub benchmark
    facts.task, facts.task_hub_id = "svamp", "ChilleD/SVAMP"
    facts.evals["trained"] |= {"accuracy": 0.4, "n": 300}
    (entry,) = parse_eval_result_entries(yaml.safe_load(eval_results_yaml(facts)))
    assert (entry.dataset_id, entry.task_id, entry.value) == ("ChilleD/SVAMP", "svamp", 40.0)
    assert "n=300" in entry.notes
