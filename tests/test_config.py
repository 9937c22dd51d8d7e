from dataclasses import dataclass, field

import pytest

from cmrfm.config import build_config, parse_overrides, to_dict
from cmrfm.errors import ConfigError


@dataclass
class Optim:
    lr: float = 1e-3
    betas: tuple[float, float] = (0.9, 0.999)


@dataclass
class Run:
    name: str = "x"
    steps: int = 10
    amp: bool = False
    sources: list[str] = field(default_factory=list)
    optim: Optim = field(default_factory=Optim)
    out: str | None = None


def test_overrides_typed_and_nested(tmp_path):
    yml = tmp_path / "a.yaml"
    yml.write_text("steps: 20\noptim:\n  lr: 0.01\n")
    cfg = build_config(Run, [yml], ["optim.lr=3e-4", "amp=true", "sources=[a,b]", "optim.betas=0.8,0.9"])
    assert cfg.steps == 20 and cfg.optim.lr == pytest.approx(3e-4) and cfg.amp is True
    assert cfg.sources == ["a", "b"] and cfg.optim.betas == (0.8, 0.9)
    assert to_dict(cfg)["optim"]["lr"] == pytest.approx(3e-4)


def test_base_file_inheritance(tmp_path):
    (tmp_path / "base.yaml").write_text("steps: 5\nname: base\n")
    (tmp_path / "child.yaml").write_text("_base_: base.yaml\nname: child\n")
    cfg = build_config(Run, [tmp_path / "child.yaml"])
    assert (cfg.steps, cfg.name) == (5, "child")


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("stepz=3", "unknown config key 'stepz'"),
        ("optim.lrr=3", "unknown config key 'optim.lrr'"),
        ("steps=abc", "steps"),
        ("amp=maybe", "amp"),
        ("justakey", "key=value"),
    ],
)
def test_bad_overrides_are_clear(override, message):
    with pytest.raises(ConfigError, match=message):
        build_config(Run, [], [override])


def test_none_and_missing_file(tmp_path):
    assert build_config(Run, [], ["out=none"]).out is None
    with pytest.raises(ConfigError, match="not found"):
        build_config(Run, [tmp_path / "nope.yaml"])
    assert parse_overrides(["a.b=1"]) == {"a": {"b": 1}}


def test_yaml12_booleans_keep_words(tmp_path):
    from typing import Literal

    @dataclass
    class Amp:
        amp: Literal["auto", "bf16", "off"] = "auto"
        flag: bool = False

    assert build_config(Amp, [], ["amp=off", "flag=on"]) == Amp(amp="off", flag=True)
    (tmp_path / "a.yaml").write_text("amp: off\nflag: true\n")
    assert build_config(Amp, [tmp_path / "a.yaml"]) == Amp(amp="off", flag=True)


def test_dict_fields_merge_key_by_key(tmp_path):
    """A command-line task option adds to the task options a YAML file set; it never drops them."""
    from cmrfm.engine.finetune import FinetuneConfig

    path = tmp_path / "run.yaml"
    path.write_text("task_options:\n  lesionmix: 0.5\n  augment:\n    flip_prob: 0.2\n")
    cfg = build_config(
        FinetuneConfig,
        yaml_paths=[path],
        overrides=["task_options.lesion_oversample=2", "task_options.augment.rotate_deg=5"],
    )
    assert cfg.task_options == {
        "lesionmix": 0.5,
        "lesion_oversample": 2,
        "augment": {"flip_prob": 0.2, "rotate_deg": 5},
    }
    assert build_config(FinetuneConfig, [path], ["task_options.lesionmix=0"]).task_options["lesionmix"] == 0


@dataclass
class _Documented:
    """A config whose docstring documents its fields.

    Attributes:
        lr: Peak learning rate, reached after
            the warm-up.
        steps (int): Optimiser steps.
    """

    lr: float = 1e-3
    steps: int = 5
    optim: Optim = field(default_factory=lambda: Optim(lr=0.5))
    note: str = ""


def test_describe_fields_lists_every_key_with_default_and_docs():
    from cmrfm.config import describe_fields

    rows = {key: (default, meaning) for key, default, meaning in describe_fields(_Documented, "x.")}
    assert list(rows) == ["x.lr", "x.steps", "x.optim.lr", "x.optim.betas", "x.note"]
    assert rows["x.lr"] == (1e-3, "Peak learning rate, reached after the warm-up.")
    assert rows["x.steps"] == (5, "Optimiser steps.")
    assert rows["x.optim.lr"][0] == 0.5  # the parent's default for the nested config, not Optim's
    assert rows["x.note"] == ("", "")
