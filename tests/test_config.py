"""Run configs: shipped configs validate, errors are all reported with dotted paths and hints."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from mapd.config import load_config
from mapd.errors import MapdError

ROOT = Path(__file__).resolve().parents[1]
SHIPPED = sorted((ROOT / "configs").rglob("*.yaml"))
RUN_CONFIGS = [p for p in SHIPPED if "accelerate" not in p.parts]


def mapd(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "mapd", *args], capture_output=True, text=True, cwd=cwd
    )


def test_there_are_shipped_configs():
    names = {p.relative_to(ROOT / "configs").as_posix() for p in RUN_CONFIGS}
    assert "demo.yaml" in names
    assert {f"paper/{t}.yaml" for t in ("gsm8k", "svamp", "strategyqa", "logiqa")} <= names
    assert any(n.startswith("examples/") for n in names)


@pytest.mark.parametrize("path", RUN_CONFIGS, ids=lambda p: p.relative_to(ROOT).as_posix())
def test_every_shipped_config_validates(path):
    from mapd.ablation import row_configs

    cfg = load_config(path)
    assert cfg.teachers
    assert cfg.run_dir == Path(f"runs/{cfg.name}")
    assert row_configs(cfg)  # and every row `mapd ablate` would train from it


@pytest.mark.parametrize(
    "override, line",
    [
        ("teachers.0.batch=maybe", "teachers.0.batch: Input should be a valid boolean"),
        ("prompts={rationale: 5}", "prompts.rationale: Input should be a valid string (got 5)"),
        ("teachers.0.headers={X: 5}", "teachers.0.headers.X: Input should be a valid string"),
        ("task.sizes={train: abc}", "task.sizes.train: Input should be a valid integer"),
        ("ablation.variants={a: 5}", "ablation.variants.a: Input should be a valid list"),
        ("teachers.0.limits.rpm=abc", "teachers.0.limits.rpm: Input should be a valid number"),
        ("ablation.seeds=[a]", "ablation.seeds.0: Input should be a valid integer"),
        ("student=foo", "student: expected a section of KEY: VALUE settings"),
        ("teachers=[]", "teachers: List should have at least 1 item, not 0"),
        ("teachers={a: {model: x}}", "teachers: expected a list: start each teacher with `- `"),
        ("review=false", "review: expected a section of KEY: VALUE settings (to train on every"),
        ("train.learning_rate=1e-4", "train.learning_rate: unknown key; did you mean `lr`?"),
        ("eval.split=validation", "eval.split: Input should be 'test' or 'train'"),
        ("student.dtype=fp16", "student.dtype: Input should be 'auto', 'float32', 'bfloat16'"),
        ("student.device=gpu", "student.device: String should match pattern"),
        ("train.lr_scheduler=cosin", "train.lr_scheduler: Input should be 'linear', 'cosine'"),
        ("review.reviewers=3", "config: review.reviewers is 3, but each rationale has only 2"),
        ("student.backend=sglang", "student.backend: a sglang server is `backend: openai`"),
        ("teachers.1.backend=HF", "teachers.1.backend: a model run in this process is `backend"),
    ],
)
def test_a_wrong_value_is_named_by_its_setting_once(override, line):
    with pytest.raises(MapdError) as err:
        load_config(ROOT / "configs/paper/svamp.yaml", [override])
    problems = err.value.message.splitlines()[1:]
    assert len(problems) == 1 and problems[0].strip().startswith(line), problems


@pytest.mark.parametrize("threshold, ok", [(1, True), (4.9, True), (5, False), (0.5, False)])
def test_the_review_threshold_lies_on_the_scale(threshold, ok):
    settings = [f"review.threshold={threshold}"]
    if ok:
        assert (
            load_config(ROOT / "configs/paper/svamp.yaml", settings).review.threshold == threshold
        )
    else:
        with pytest.raises(MapdError, match="must lie in"):
            load_config(ROOT / "configs/paper/svamp.yaml", settings)


@pytest.mark.parametrize(
    "value", ["sk-proj-abc", "gsk_4fQzAbc123", "hf_abcDEF", "a1b2c3d4e5f6g7h8i9j0k1l2m3"]
)
def test_an_api_key_in_place_of_its_variable_is_refused_unrepeated(value):
    with pytest.raises(MapdError) as err:
        load_config(ROOT / "configs/paper/svamp.yaml", [f"teachers.0.api_key_env={value}"])
    assert "not the key itself" in err.value.message and value not in err.value.message


@pytest.mark.parametrize("value", ["$OPENAI_API_KEY", "${OPENAI_API_KEY}"])
def test_a_shell_variable_is_named_without_its_dollar(value):
    with pytest.raises(MapdError, match="without `\\$`: api_key_env: OPENAI_API_KEY "):
        load_config(ROOT / "configs/paper/svamp.yaml", [f"teachers.0.api_key_env={value}"])


def test_yaml_words_are_words_and_paths_start_at_home(tmp_path):
    (tmp_path / "c.yaml").write_text(
        (ROOT / "configs/paper/svamp.yaml").read_text() + "cache: off\noutput_dir: ~/runs/x\n"
    )
    cfg = load_config(tmp_path / "c.yaml", ["task.source=local", "task.path=~/svamp.json"])
    assert cfg.cache == "off"  # YAML reads a bare off as False
    assert cfg.run_dir == Path.home() / "runs/x"
    assert cfg.task.path == str(Path.home() / "svamp.json")
    assert load_config(tmp_path / "c.yaml", ["cache=off"]).cache == "off"
    with pytest.raises(MapdError, match="name: String should have at least 1 character"):
        load_config(tmp_path / "c.yaml", ["name="])


@pytest.mark.parametrize(
    "url, batch, ok",
    [
        ("https://api.anthropic.com/v1", "true", False),
        ("https://api.anthropic.com/v1", "anthropic", True),
        ("https://api.openai.com/v1", "anthropic", False),
        ("https://api.openai.com/v1", "openai", True),
        ("http://localhost:8000/v1", "anthropic", True),  # any other host: taken at its word
    ],
)
def test_a_batch_kind_the_provider_does_not_have_is_refused(url, batch, ok):
    settings = [f"teachers.0.base_url={url}", f"teachers.0.batch={batch}"]
    if ok:
        load_config(ROOT / "configs/paper/svamp.yaml", settings)
    else:
        with pytest.raises(MapdError, match="needs `batch: "):
            load_config(ROOT / "configs/paper/svamp.yaml", settings)


def test_variable_names_are_not_taken_for_keys():
    for name in ("OPENAI_API_KEY", "together_key", "MY_KEY_2"):
        cfg = load_config(ROOT / "configs/paper/svamp.yaml", [f"teachers.0.api_key_env={name}"])
        assert cfg.teachers[0].api_key_env == name


def test_a_variant_may_change_prompts_and_sampling_but_not_the_questions():
    from mapd.ablation import row_configs

    cfg = load_config(
        ROOT / "configs/paper/svamp.yaml",
        ["ablation.variants={hot: [teachers.0.sampling.temperature=1.0, prompts.rationale=x]}"],
    )
    assert row_configs(cfg)[("hot", cfg.seed)].teachers[0].sampling.temperature == 1.0
    for fixed in ("task.limit=3", "eval.limit=3", "student.model=other"):
        with pytest.raises(MapdError, match="cannot change between rows"):
            load_config(ROOT / "configs/paper/svamp.yaml", [f"ablation.variants={{a: [{fixed}]}}"])


def test_paper_preset_carries_the_paper_settings():
    cfg = load_config(ROOT / "configs/paper/svamp.yaml")
    assert len(cfg.teachers) == 3
    assert all(t.sampling.temperature == 0.8 and t.sampling.max_tokens == 512 for t in cfg.teachers)
    assert (cfg.student.sampling.temperature, cfg.student.sampling.top_p) == (0.3, 0.9)
    assert cfg.review.require_correct_answer is False and cfg.dataset.answer_line is False
    assert (cfg.train.method, cfg.train.lr, cfg.train.epochs, cfg.train.alpha) == (
        "full",
        1e-5,
        10,
        0.5,
    )
    assert (cfg.train.batch_size, cfg.train.grad_accum, cfg.seed) == (8, 2, 731)
    assert all(t.api_key_env for t in cfg.teachers)


def test_overrides_use_dotted_paths_and_list_indexes():
    cfg = load_config(
        ROOT / "configs/paper/gsm8k.yaml",
        ["train.lr=2e-5", "teachers.0.model=gpt-4o-mini", "review.reviewers=1", "output_dir=x"],
    )
    assert cfg.train.lr == 2e-5
    assert cfg.teachers[0].model == "gpt-4o-mini"
    assert cfg.review.reviewers == 1
    assert cfg.run_dir == Path("x")


@pytest.mark.parametrize(
    "override, needle",
    [
        ("teachers.9.model=x", "no index 9"),
        ("trainlr", "not KEY=VALUE"),
        ("train.lr=fast", "train.lr"),
    ],
)
def test_bad_overrides_are_clear(override, needle):
    with pytest.raises(MapdError) as err:
        load_config(ROOT / "configs/demo.yaml", [override])
    assert needle in str(err.value)


BROKEN = """\
name: broken
task: {name: gsm8k, sourc: hub}
student: {model: x}
teachers:
  - {model: a, base_url: "http://127.0.0.1:1/v1", temprature: 0.3}
  - {model: b, base_url: "http://127.0.0.1:1/v1"}
train: {lr: -1}
"""


def test_validate_reports_every_error_with_suggestions(tmp_path):
    path = tmp_path / "broken.yaml"
    path.write_text(BROKEN)
    result = mapd("validate", str(path))
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    assert "3 problem(s)" in result.stderr
    assert "task.sourc: unknown key; did you mean `source`?" in result.stderr
    assert (
        "teachers.0.temprature: unknown key; did you mean `sampling.temperature`?" in result.stderr
    )
    assert "train.lr" in result.stderr


@pytest.mark.parametrize(
    "override, needle",
    [
        ("teachers.0.base_url=null", "teachers.0: backend openai needs `base_url`"),
        ("task.source=local", "task: source: local needs `path`"),
        ("dataset.mode=single_teacher", "dataset.teacher must name one of the teachers"),
    ],
)
def test_section_errors_name_the_field_not_the_whole_section(override, needle):
    config = "configs/examples/hosted-teachers-vllm-student.yaml"
    result = mapd("validate", str(ROOT / config), override)
    assert result.returncode == 2 and needle in result.stderr, result.stderr
    assert "got {" not in result.stderr and len(result.stderr) < 600, result.stderr


def test_validate_accepts_a_shipped_config():
    result = mapd("validate", str(ROOT / "configs/demo.yaml"), "train.epochs=2")
    assert result.returncode == 0, result.stderr
    assert "valid" in result.stdout


@pytest.mark.parametrize(
    "text, needle",
    [
        ("name: [unclosed\n", "malformed YAML at line"),
        ("- a\n- b\n", "mapping"),
        ("name: x\n", "task: required key is missing"),
        (
            "name: x\ntrain:\n  lr: 1.0e-4\nseed: 1\ntrain:\n  epochs: 1\n",
            "line 5, column 1: `train` is given twice in one section (lines 2 and 5); keep one",
        ),
        ("name: x\nstudent: {model: a, model: b}\n", "`model` is given twice"),
        ("name: x\ntask:\n  name: gsm8k\n   source: hub\n", "indent the line to its section"),
        ("name: x\nteachers:\n  - name: a\n    model: b\n   base_url: c\n", "keys of one"),
        ("name: x\n\tseed: 1\n", "indent with spaces, not tabs"),
        (  # merges are not duplicates; a second key beside a merge still is
            "a: &t {limits: {rpm: 1}}\nstudent: {<<: *t, limits: {rpm: 2}}\n"
            "teacher: {<<: *t, model: x, model: y}\n",
            "`model` is given twice in one section (lines 3 and 3)",
        ),
    ],
)
def test_malformed_configs_exit_2_with_one_clear_message(tmp_path, text, needle):
    path = tmp_path / "c.yaml"
    path.write_text(text)
    result = mapd("validate", str(path))
    assert result.returncode == 2
    assert needle in result.stderr
    assert "Traceback" not in result.stderr


def test_not_utf8_and_missing_config(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_bytes(b"name: \xff\xfe\n")
    assert "not UTF-8" in mapd("validate", str(path)).stderr
    missing = mapd("validate", str(tmp_path / "nope.yaml"))
    assert missing.returncode == 2 and "not found" in missing.stderr


def test_single_teacher_mode_must_name_a_teacher():
    with pytest.raises(MapdError, match="dataset.teacher"):
        load_config(
            ROOT / "configs/demo.yaml", ["dataset.mode=single_teacher", "dataset.teacher=nobody"]
        )


def test_help_lists_commands_with_examples():
    result = mapd("--help")
    assert result.returncode == 0
    assert "validate" in result.stdout
    assert mapd("--version").stdout.startswith("mapd ")


def run_folder_config(tmp_path: Path) -> Path:
    """A run folder's own config.yaml, as `mapd run` and `mapd import-release` write it."""
    from mapd.config import dump_run_config

    cfg = load_config(ROOT / "configs" / "demo.yaml", [f"output_dir={tmp_path / 'run'}"])
    path = tmp_path / "run" / "config.yaml"
    path.parent.mkdir()
    path.write_text(dump_run_config(cfg), encoding="utf-8")
    return path


def test_overrides_saved_into_a_run_folders_config_are_named(tmp_path):
    from mapd.config import saved_overrides

    path = run_folder_config(tmp_path)
    before = load_config(path).eval.limit
    changes = saved_overrides(path, ["eval.limit=7", "train.lr=" + str(load_config(path).train.lr)])
    assert changes == [("eval.limit", before, 7)]  # an override that changes nothing is not named
    assert saved_overrides(path, []) == []
    assert saved_overrides(ROOT / "configs" / "demo.yaml", ["eval.limit=7"]) == []
    # saved into another run folder: this file is left as it is
    assert saved_overrides(path, ["eval.limit=7", f"output_dir={tmp_path / 'other'}"]) == []


def test_cli_says_when_an_override_is_kept_in_the_run_folder(tmp_path, monkeypatch, capsys):
    from mapd import cli
    from mapd.stages import pipeline

    path = run_folder_config(tmp_path)

    async def stop(cfg, **kwargs):
        raise MapdError("stopped here")

    monkeypatch.setattr(pipeline, "run_pipeline", stop)
    monkeypatch.setattr(sys, "argv", ["mapd", "run", str(path), "eval.limit=7"])
    with pytest.raises(SystemExit):
        cli.main()
    err = capsys.readouterr().err
    assert "eval.limit=7 is saved into it" in err
    assert f"(undo with eval.limit={cli._yaml_value(load_config(path).eval.limit)})" in err
    # a wrong --from stops before anything is said to be kept
    monkeypatch.setattr(sys, "argv", ["mapd", "run", str(path), "eval.limit=7", "--from", "x"])
    with pytest.raises(SystemExit):
        cli.main()
    err = capsys.readouterr().err
    assert "unknown stage 'x'" in err and "saved into it" not in err


def test_train_seed_changes_only_what_training_draws():
    from mapd.stages.pipeline import STAGES

    demo = ROOT / "configs" / "demo.yaml"
    cfg = load_config(demo)
    same = load_config(demo, [f"train.seed={cfg.seed}"])
    other = load_config(demo, ["train.seed=1"])
    for stage in ("exam", "teach", "review", "build", "train", "eval"):
        settings = STAGES[stage].settings
        # the run's own seed given as train.seed keeps every fingerprint of earlier runs
        assert settings(same) == settings(cfg), stage
        assert (settings(other) != settings(cfg)) == (stage in ("build", "train")), stage


def test_the_paper_configs_are_the_presets_shipped_in_the_package():
    from mapd.config import preset_path

    shipped = sorted(p.name for p in (ROOT / "configs" / "paper").iterdir())
    assert shipped == ["gsm8k.yaml", "logiqa.yaml", "strategyqa.yaml", "svamp.yaml"]
    for name in shipped:  # configs/paper/* are links to src/mapd/presets/paper/*: one source
        preset = preset_path(f"paper/{name.removesuffix('.yaml')}").read_bytes()
        assert (ROOT / "configs" / "paper" / name).read_bytes() == preset


def test_a_usd_budget_needs_a_price_for_every_hosted_endpoint():
    hosted = ROOT / "configs/examples/hosted-teachers-vllm-student.yaml"
    assert load_config(hosted).budget.usd  # every hosted teacher priced; the student is local
    with pytest.raises(MapdError, match="but gemini-2.0-flash has none: set its price"):
        load_config(hosted, ["teachers.1.price={}"])
    free = load_config(hosted, ["teachers.1.price={input_per_mtok: 0}"])
    assert free.teachers[1].price.input_per_mtok == 0
    with pytest.raises(MapdError, match="but gemini-2.0-flash has none"):
        load_config(hosted, ["teachers.1.price={batch_discount: 0.5}"])  # still no price
    for lan in ("10.0.0.7", "gpu-box:8000", "vllm.internal", "100.64.0.3"):
        load_config(hosted, ["teachers.1.price={}", f"teachers.1.base_url=http://{lan}/v1"])
    load_config(hosted, ["teachers.1.price={}", "budget.usd=null", "budget.tokens=9"])


def test_the_readme_config_validates(tmp_path):
    import re

    blocks = re.findall(r"```yaml\n(.*?)```", (ROOT / "README.md").read_text(), re.S)
    assert blocks
    for i, block in enumerate(blocks):
        (tmp_path / f"readme-{i}.yaml").write_text(block)
        assert load_config(tmp_path / f"readme-{i}.yaml").teachers


def test_the_own_data_example_reads_its_questions():
    from mapd.tasks import load_questions

    cfg = load_config(ROOT / "configs/examples/own-data.yaml")
    cfg.task.path = str(ROOT / cfg.task.path)  # the example's path is from the repository root
    train, test = (load_questions(cfg.task, s, cfg.seed).questions for s in ("train", "test"))
    assert len(train) + len(test) == 40 and train and test
    assert train[0].id.startswith("shop-") and train[0].answer.isdigit()


def test_a_preset_is_named_without_the_repository(tmp_path):
    found = mapd("validate", "paper/svamp", cwd=tmp_path)  # no configs/ folder here
    assert found.returncode == 0 and "task svamp" in found.stdout, found.stderr
    assert "note: paper/svamp is the preset shipped in the package" in found.stderr
    (tmp_path / "paper").mkdir()
    (tmp_path / "paper/svamp.yaml").write_text((ROOT / "configs/demo.yaml").read_text())
    own = mapd("validate", "paper/svamp", cwd=tmp_path)  # a file of that name is the user's
    assert own.returncode == 0 and "task gsm8k" in own.stdout and "preset" not in own.stderr
    folder = mapd("validate", ".", cwd=tmp_path)
    assert folder.returncode == 2 and "is a folder, not a config file" in folder.stderr
    missing = mapd("validate", "paper/nope", cwd=tmp_path)
    assert missing.returncode == 2
    assert "presets in the package: paper/gsm8k, paper/logiqa" in missing.stderr


def test_the_schedulers_are_transformers_own():
    from transformers import SchedulerType

    from mapd.config import SCHEDULERS

    assert set(SCHEDULERS) <= {s.value for s in SchedulerType}


@pytest.mark.parametrize("key", ["learning_rate", "lr"])
def test_train_args_refuse_what_mapd_sets_naming_its_setting(key):
    result = mapd("validate", str(ROOT / "configs/demo.yaml"), f"train.args={{{key}: 1e-4}}")
    assert result.returncode == 2 and "Traceback" not in result.stderr
    lines = [line for line in result.stderr.splitlines() if f"train.args.{key}" in line]
    assert len(lines) == 1 and "set by mapd; use train.lr" in lines[0], result.stderr


def test_train_args_are_kept_and_fp16_needs_fp32():
    cfg = load_config(ROOT / "configs/demo.yaml", ["train.args={weight_decay: 0.1}"])
    assert cfg.train.args == {"weight_decay": 0.1}
    with pytest.raises(MapdError, match=r"train\.args\.fp16: needs train\.precision: fp32"):
        load_config(ROOT / "configs/demo.yaml", ["train.args={fp16: true}"])
    fp32 = ["train.args={fp16: true}", "train.precision=fp32"]
    assert load_config(ROOT / "configs/demo.yaml", fp32).train.args == {"fp16": True}


@pytest.mark.parametrize(
    "value, ok", [("tensorboard", True), ("[trackio, wandb]", True), ("tensorbord", False)]
)
def test_report_to_takes_a_tracker_or_a_list_of_them(value, ok):
    if ok:
        load_config(ROOT / "configs/demo.yaml", [f"train.report_to={value}"])
    else:
        with pytest.raises(
            MapdError, match="report_to: 'tensorbord' is none of transformers' trackers"
        ):
            load_config(ROOT / "configs/demo.yaml", [f"train.report_to={value}"])


def test_the_trackers_are_transformers_own():
    from transformers.integrations.integration_utils import INTEGRATION_TO_CALLBACK

    from mapd.config.schema import TRACKERS

    assert set(TRACKERS) == {*INTEGRATION_TO_CALLBACK, "all", "none"}
