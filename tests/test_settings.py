"""One settings model: the flow's parameters, the command line, prefect.yaml and the README all follow it."""

from __future__ import annotations

import inspect
import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from pydantic_core import to_jsonable_python

from flows.parameters import markdown_table, parse_args, signature
from training.errors import ConfigError
from training.settings import PredictSettings, SweepSettings, TrainSettings

REPO = Path(__file__).resolve().parents[1]
MODELS = {
    "flows/train.py:train": TrainSettings,
    "flows/predict.py:predict": PredictSettings,
    "flows/sweep.py:sweep": SweepSettings,
}


@pytest.mark.parametrize(
    ("pair", "expected"),
    [
        # what make's shell leaves of ARGS='variants=["optimizer"]': the quotes are gone
        ("variants=[optimizer]", {"variants": ["optimizer"]}),
        ('variants=["optimizer"]', {"variants": ["optimizer"]}),
        ("variants=optimizer,manual", {"variants": ["optimizer", "manual"]}),
        ("features=t_u", {"features": ["t_u"]}),
        ("epochs=100", {"epochs": 100}),
        ("lr=1e-2", {"lr": 0.01}),
        ("optimizer_options={momentum:0.9}", {"optimizer_options": {"momentum": 0.9}}),
        (
            'optimizer_options={"momentum": 0.9, "nesterov": true}',
            {"optimizer_options": {"momentum": 0.9, "nesterov": True}},
        ),
        ("init={weight: 2, bias: -1}", {"init": {"weight": 2, "bias": -1}}),
        ("model_name=null", {"model_name": None}),
        ("experiment=2024", {"experiment": "2024"}),  # a text setting stays text
        ("data=data/my file.csv", {"data": "data/my file.csv"}),
        ("model=mlp", {"model": "mlp"}),
        ("hidden=13", {"hidden": 13}),
        ("activation=relu", {"activation": "relu"}),
        ("val_indices=[7,10]", {"val_indices": [7, 10]}),
        ("val_indices=null", {"val_indices": None}),
    ],
)
def test_command_line_values_read_as_the_setting_expects(pair, expected):
    params = parse_args(TrainSettings, [pair])
    assert params == expected
    TrainSettings.parse(params)  # and the model takes them


def test_unknown_or_malformed_arguments_are_refused_naming_the_parameters():
    with pytest.raises(ConfigError, match="unknown parameter 'epoch'.*epochs"):
        parse_args(TrainSettings, ["epoch=3"])
    with pytest.raises(ConfigError, match="expected key=value"):
        parse_args(TrainSettings, ["epochs"])


def make_run(args: str) -> subprocess.CompletedProcess:
    """``make run ARGS=...`` exactly as a user types it in a shell (make's own shell then sees $(ARGS))."""
    # the dependencies are installed (the tests run in that environment): make must not reinstall them, as it
    # would in a fresh checkout or worktree (pyproject.toml newer than its stamp), and from several workers
    return subprocess.run(
        f"make -s -o .venv/.installed-stamp run ARGS={args}",
        shell=True, cwd=REPO, capture_output=True, text=True, timeout=120,
    )  # fmt: skip


@pytest.mark.integration
@pytest.mark.parametrize(
    ("args", "expected"),
    [
        ("""'variants=["optimizer"] epochs=100'""", {"variants": ["optimizer"], "epochs": 100}),
        ("""'variants=optimizer,manual'""", {"variants": ["optimizer", "manual"]}),
        ('''"epochs=100"''', {"epochs": 100}),
        (
            """'optimizer_options={"momentum":0.9} lr=1e-3'""",
            {"optimizer_options": {"momentum": 0.9}, "lr": 0.001},
        ),
    ],
)
def test_make_run_arguments_survive_makes_shell(args, expected):
    out = make_run(f"{args[:-1]} --dry-run{args[-1]}")
    assert out.returncode == 0, out.stderr
    settings = json.loads(out.stdout)
    assert {k: settings[k] for k in expected} == expected


def test_help_lists_every_parameter_with_its_default_and_description():
    out = subprocess.run(
        [sys.executable, "-m", "flows.run", "train", "--help"],
        cwd=REPO,
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    for name, field in TrainSettings.model_fields.items():
        shown = json.dumps(to_jsonable_python(field.get_default(call_default_factory=True)))
        assert f"  {name}={shown}\n" in out, name
        assert field.description and field.description in out, name


def test_the_flows_parameters_are_the_settings_models_fields():
    from flows.predict import predict
    from flows.train import train

    for flow, model in ((train, TrainSettings), (predict, PredictSettings)):
        params = inspect.signature(flow).parameters
        assert list(params) == list(model.model_fields)
        assert {n: p.default for n, p in params.items()} == {
            n: f.get_default(call_default_factory=True) for n, f in model.model_fields.items()
        }
        schema = flow.parameters.model_dump()["properties"]  # what the Prefect UI's run form shows
        for name, field in model.model_fields.items():
            assert schema[name]["description"] == field.description, name
    schema = train.parameters.model_dump()["properties"]
    assert schema["lr"]["exclusiveMinimum"] == 0 and schema["epochs"]["minimum"] == 1
    assert schema["variants"]["items"]["enum"] == ["manual", "autograd", "optimizer"]
    # written nowhere by hand: the flow's signature is the one generated from the model
    assert inspect.signature(train).parameters == signature(TrainSettings).parameters


def test_prefect_yaml_deployments_hold_valid_settings_that_differ_from_the_defaults():
    spec = yaml.safe_load((REPO / "prefect.yaml").read_text())
    for deployment in spec["deployments"]:
        model = MODELS[deployment["entrypoint"]]
        params = deployment.get("parameters") or {}
        settings = model.parse(params)  # unknown names and bad values are refused
        defaults = model()
        for name in params:
            assert getattr(settings, name) != getattr(defaults, name), (
                f"{deployment['name']}: {name} repeats the default; leave it to the settings model"
            )


def test_the_readme_table_is_the_settings_model():
    readme = (REPO / "README.md").read_text()
    for model in (TrainSettings, PredictSettings, SweepSettings):
        assert markdown_table(model) in readme, (
            f"the README's table of {model.__name__} is stale; paste flows.parameters.markdown_table's output"
        )
