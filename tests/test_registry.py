"""The registry type and every registry built on it: networks, losses, recipes, optimizers, schedules,
normalisations. A miss names the known entries; names can be checked before anything is written."""
from __future__ import annotations

import dataclasses
import doctest
import subprocess
import sys
import typing

import numpy as np
import pytest
import torch

import autoseg.registry
from autoseg import plans
from autoseg.errors import ConfigurationError
from autoseg.networks.registry import NETWORKS, REGISTRY, get_spec
from autoseg.plans import RECIPES, Normalisation, Recipe
from autoseg.preprocessing.normalisation import SCHEMES, normalise
from autoseg.registry import Registry
from autoseg.training.losses import LOSSES, build_loss
from autoseg.training.recipes import (
    OPTIMIZERS,
    PRESET_FIELDS,
    SCHEDULES,
    build_optimizer,
    check_recipe,
    kept_fields,
    recipe_named,
)

ALL = {"network": REGISTRY, "loss": LOSSES, "recipe": RECIPES, "optimizer": OPTIMIZERS,
       "schedule": SCHEDULES, "normalisation": SCHEMES}


def test_a_miss_lists_the_known_names_and_suggests_the_closest() -> None:
    colours = Registry("colour", {"red": 1, "green": 2, "blue": 3})
    with pytest.raises(ConfigurationError) as err:
        colours["gren"]
    message = str(err.value)
    assert "unknown colour 'gren'" in message and "Did you mean 'green'?" in message
    assert "Known: blue, green, red." in message
    with pytest.raises(ConfigurationError, match="Known: blue, green, red") as err:
        colours.check("purple")
    assert "Did you mean" not in str(err.value)  # nothing close: no suggestion
    assert colours.check("red") == "red"


def test_a_registry_is_a_read_only_mapping_in_registration_order() -> None:
    entries = {"b": 1, "a": 2}
    reg = Registry("thing", entries)
    entries["c"] = 3  # the registry took a copy
    assert reg.names() == ("b", "a") == tuple(reg) and len(reg) == 2
    assert dict(reg) == {"b": 1, "a": 2} and reg["a"] == 2
    assert "a" in reg and "c" not in reg and ["a"] not in reg and None not in reg
    assert reg.get("c") is None and reg.get("c", 0) == 0 and reg.get("b") == 1
    with pytest.raises(TypeError):
        reg["c"] = 3  # type: ignore[index]
    with pytest.raises(ConfigurationError, match="unknown thing"):
        reg[["a"]]  # type: ignore[index]  # an unhashable key is a miss, not a TypeError


def test_the_module_example_runs() -> None:
    assert doctest.testmod(autoseg.registry).failed == 0


@pytest.mark.parametrize("kind", ALL)
def test_every_registry_is_built_on_the_type_and_fails_loudly(kind: str) -> None:
    registry = ALL[kind]
    assert isinstance(registry, Registry) and registry.kind == kind and len(registry) >= 2
    first = registry.names()[0]
    with pytest.raises(ConfigurationError) as err:
        registry[first + "x"]
    assert f"Did you mean '{first}'?" in str(err.value)
    assert all(name in str(err.value) for name in registry)


def test_each_registrys_users_raise_its_error() -> None:
    with pytest.raises(ConfigurationError, match="Did you mean 'transunet'"):
        get_spec("transunett")
    with pytest.raises(ConfigurationError, match="Did you mean 'dice_ce'"):
        build_loss("dice_cee")
    with pytest.raises(ConfigurationError, match="Did you mean 'adam_poly'"):
        recipe_named("adam_pol", Recipe())
    with pytest.raises(ConfigurationError, match=r"unknown optimizer 'adamw'\. Did you mean 'adam'.*Known: adam, sgd"):
        build_optimizer(Recipe(optimizer="adamw"), [torch.nn.Parameter(torch.zeros(1))])
    with pytest.raises(ConfigurationError, match="Did you mean 'zscore'"):
        normalise(np.zeros((1, 2, 2, 2), np.float32), [Normalisation("z-score")])


def test_registries_agree_with_the_names_plans_accept() -> None:
    """Plans validation (autoseg.plans) cannot import training or preprocessing; the closed sets it
    checks must be exactly what the registries implement."""
    assert set(OPTIMIZERS) == set(plans.OPTIMIZERS)
    assert set(SCHEDULES) == set(plans.SCHEDULES)
    assert set(SCHEMES) == set(typing.get_args(plans.NormalisationScheme))
    for name, recipe in RECIPES.items():
        assert recipe.name == name
        check_recipe(recipe)  # every preset names only implemented parts


@pytest.mark.parametrize("field, value, kind", [
    ("optimizer", "adamw", "optimizer"), ("schedule", "cosine", "schedule"), ("loss", "dice_focal", "loss")])
def test_check_recipe_names_the_bad_field_before_anything_runs(field: str, value: str, kind: str) -> None:
    with pytest.raises(ConfigurationError, match=f"unknown {kind} '{value}'.*Known: "):
        check_recipe(dataclasses.replace(Recipe(), **{field: value}))


def test_optimizers_are_built_as_before() -> None:
    p = [torch.nn.Parameter(torch.zeros(1))]
    sgd = build_optimizer(RECIPES["sgd_poly"], p)
    assert type(sgd) is torch.optim.SGD
    assert sgd.defaults["nesterov"] and sgd.defaults["momentum"] == 0.99 and sgd.defaults["lr"] == 1e-2
    adam = build_optimizer(RECIPES["adam_poly"], p)
    assert type(adam) is torch.optim.AdamW and adam.defaults["lr"] == 3e-3
    assert adam.defaults["weight_decay"] == 1e-5


def test_recipe_named_keeps_every_field_a_preset_does_not_define() -> None:
    """A field added to Recipe later is kept from the base without anyone remembering to list it."""
    fields = {f.name for f in dataclasses.fields(Recipe)}
    assert set(PRESET_FIELDS) <= fields  # no misspelt preset field
    assert set(kept_fields()) == fields - set(PRESET_FIELDS)
    # the fields the hand-written list kept, and the budget in steps that it forgot
    assert {"epochs", "iterations_per_epoch", "loss", "oversample_foreground", "deep_supervision",
            "time_budget_s", "precision", "steps"} <= set(kept_fields())
    base = Recipe(name="mine", optimizer="sgd", initial_lr=0.5, weight_decay=0.25, momentum=0.5,
                  schedule="poly", epochs=7, iterations_per_epoch=3, loss="dice", oversample_foreground=0.1,
                  deep_supervision=False, plateau_patience=9, early_stop_patience=8, time_budget_s=60.0,
                  steps=42, precision="fp32", sampler="components", class_contrast=0.3, edge_context=0.25,
                  lesion_paste=0.5, lesion_class=2, lesion_host=1)
    same = [f for f in fields - {"optimizer", "schedule"} if getattr(base, f) == getattr(Recipe(), f)]
    assert not same, f"give the base recipe of this test a non-default value for {same}"
    for name, preset in RECIPES.items():
        r = recipe_named(name, base)
        assert all(getattr(r, f) == getattr(preset, f) for f in PRESET_FIELDS)
        assert all(getattr(r, f) == getattr(base, f) for f in kept_fields())
        assert recipe_named(name) is preset


def test_network_modules_are_imported_only_when_asked_for() -> None:
    code = ("import sys, autoseg.networks.registry as r; "
            "assert not [m for m in ('arunet', 'uca_net', 'ra_vnet', 'unetpp_aspp', 'transunet', 'baselines') "
            "if 'autoseg.networks.' + m in sys.modules]; "
            "r.get_spec('transunet'); assert 'autoseg.networks.transunet' in sys.modules; "
            "assert 'autoseg.networks.uca_net' not in sys.modules")
    subprocess.run([sys.executable, "-c", code], check=True)
    assert REGISTRY.names() == NETWORKS
    assert all(get_spec(name).name == name for name in NETWORKS)
