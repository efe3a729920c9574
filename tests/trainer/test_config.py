"""Every setting is defined once (DESIGN.md decision 13): no field name of one config model of trainer/ or agent/
appears in another (a field whose value is a nested section is that section's, not a copy), and the trainer's
sections are the very models their code takes."""

from __future__ import annotations

import collections
import importlib
import inspect
import pkgutil

from pydantic import BaseModel

import agent
import trainer
from agent.engines.base import SamplingConfig
from agent.loop import AgentConfig
from trainer.config import EMBEDDED_AGENT, RENAMED, TrainerConfig
from trainer.losses import ContextAwarenessConfig, GRPOConfig

SHARED_NAMES = {
    "seed": "each program's own run seed (the trainer's, the miner's) and an episode's base seed (AgentConfig), "
    "which a trainer config may not set: the trainer seeds every episode from its own `seed`",
}
"""Names that more than one config model holds, and why that is not one setting defined twice."""


def config_models() -> dict[str, type[BaseModel]]:
    """Every pydantic model of the trainer and agent packages named `…Config`, and every model nested in one."""
    found: dict[str, type[BaseModel]] = {}
    for package in (trainer, agent):
        for info in pkgutil.walk_packages(package.__path__, package.__name__ + "."):
            module = importlib.import_module(info.name)
            for name, value in vars(module).items():
                defined_here = inspect.isclass(value) and value.__module__ == module.__name__
                if defined_here and issubclass(value, BaseModel) and name.endswith("Config"):
                    found[f"{module.__name__}.{name}"] = value
    pending = list(found.values())
    while pending:
        model = pending.pop()
        for field in model.model_fields.values():
            nested = field.annotation
            if inspect.isclass(nested) and issubclass(nested, BaseModel):
                key = f"{nested.__module__}.{nested.__name__}"
                if key not in found:
                    found[key] = nested
                    pending.append(nested)
    return found


def own_fields(model: type[BaseModel]) -> list[str]:
    """The fields a model defines itself (an inherited field is its base's definition)."""
    inherited = {name for base in model.__mro__[1:] for name in getattr(base, "model_fields", {})}
    return [name for name in model.model_fields if name not in inherited]


def test_no_setting_is_defined_in_two_config_models() -> None:
    models = config_models()
    assert {TrainerConfig, GRPOConfig, ContextAwarenessConfig, AgentConfig, SamplingConfig} <= set(models.values())
    defined = collections.defaultdict(list)
    for key, model in models.items():
        for name in own_fields(model):
            defined[name].append(key)
    twice = {name: where for name, where in defined.items() if len(where) > 1 and name not in SHARED_NAMES}
    assert not twice, f"settings defined in more than one config model: {twice}"


def test_the_sections_are_the_models_their_code_takes() -> None:
    fields = TrainerConfig.model_fields
    assert fields["grpo"].annotation is GRPOConfig
    assert fields["ca"].annotation is ContextAwarenessConfig
    assert fields["agent"].annotation is AgentConfig and issubclass(AgentConfig, SamplingConfig)
    config = TrainerConfig()
    assert config.grpo == GRPOConfig() and config.ca == ContextAwarenessConfig()
    assert config.agent == AgentConfig(**EMBEDDED_AGENT)
    # Given as a section or as a model, the agent's fields apply over the embedded default's agent.
    for given in ({"max_turns": 5}, AgentConfig(max_turns=5)):
        agent = TrainerConfig(agent=given).agent  # type: ignore[arg-type]
        assert agent == AgentConfig(**{**EMBEDDED_AGENT, "max_turns": 5})
    # A renamed key names a field that exists where it says.
    for new in RENAMED.values():
        path = new.split(" ")[0].split(".")
        model: type[BaseModel] = TrainerConfig
        for part in path[:-1]:
            annotation = model.model_fields[part].annotation
            assert inspect.isclass(annotation) and issubclass(annotation, BaseModel)
            model = annotation
        assert path[-1] in model.model_fields, new
