"""The run configuration: the settings (`schema`) and reading them from YAML (`loading`).

    cfg = load_config("configs/demo.yaml", ["train.lr=2e-5", "teachers.0.model=gpt-4o-mini"])

Every model rejects unknown keys; `load_config` reports all problems of a file at once,
each with its dotted path, and names the closest valid key for a misspelt one.
"""

from mapd.config.loading import (
    apply_override,
    dump_run_config,
    format_errors,
    load_config,
    parse_overrides,
    preset_path,
    read_yaml,
    saved_overrides,
    section_type,
    validate_config,
)
from mapd.config.schema import (
    BATCH_API_NAMES,
    BATCH_OF_HOST,
    SCHEDULERS,
    AblationConfig,
    BudgetConfig,
    CommitteeConfig,
    DatasetConfig,
    EvalConfig,
    Limits,
    LoraConfig,
    ModelEndpoint,
    Price,
    ReviewConfig,
    RunConfig,
    Sampling,
    StudentConfig,
    TaskConfig,
    TrainConfig,
)

__all__ = [
    "BATCH_API_NAMES",
    "BATCH_OF_HOST",
    "SCHEDULERS",
    "AblationConfig",
    "BudgetConfig",
    "CommitteeConfig",
    "DatasetConfig",
    "EvalConfig",
    "Limits",
    "LoraConfig",
    "ModelEndpoint",
    "Price",
    "ReviewConfig",
    "RunConfig",
    "Sampling",
    "StudentConfig",
    "TaskConfig",
    "TrainConfig",
    "apply_override",
    "dump_run_config",
    "format_errors",
    "load_config",
    "parse_overrides",
    "preset_path",
    "read_yaml",
    "saved_overrides",
    "section_type",
    "validate_config",
]
