"""Built-in models: ``-m synthetic`` resolution and ``autoseg pretrain`` end to end (a tiny recipe)."""
from __future__ import annotations

import json
import shutil
from dataclasses import replace
from pathlib import Path

import pytest

from autoseg import builtin
from autoseg.builtin import RECIPES, resolve_model
from autoseg.pretrain import pretrain, recipe_stamp
from autoseg.cli import main
from autoseg.errors import ConfigurationError
from autoseg.io import read_label
from autoseg.phantom_trunk import generate_trunk_case
from autoseg.settings import Settings
from tests.test_planner import fingerprint


def settings_in(tmp_path: Path) -> Settings:
    return Settings(raw=tmp_path / "raw", preprocessed=tmp_path / "pre", results=tmp_path / "res",
                    cache=tmp_path / "cache")


def test_a_path_wins_and_other_names_pass_through(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    s = settings_in(tmp_path)
    monkeypatch.chdir(tmp_path)
    assert resolve_model(Path("no_such_model"), s) == Path("no_such_model")  # the loader reports it
    (tmp_path / "synthetic").mkdir()
    assert resolve_model(Path("synthetic"), s) == Path("synthetic")


def test_a_missing_builtin_names_the_command(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(builtin, "SHIPPED_DIR", tmp_path / "shipped")
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ConfigurationError, match="'synthetic' is not installed") as err:
        resolve_model(Path("synthetic"), settings_in(tmp_path))
    assert "autoseg pretrain synthetic" in str(err.value)


def test_the_cache_wins_over_the_shipped_archive(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    shipped = tmp_path / "shipped" / "synthetic.zip"
    shipped.parent.mkdir()
    shipped.write_bytes(b"x")
    monkeypatch.setattr(builtin, "SHIPPED_DIR", shipped.parent)
    monkeypatch.chdir(tmp_path)
    s = settings_in(tmp_path)
    assert resolve_model(Path("synthetic"), s) == shipped
    cached = s.cache / "models" / "synthetic.zip"
    cached.parent.mkdir(parents=True)
    cached.write_bytes(b"y")
    assert resolve_model(Path("synthetic"), s) == cached


def test_pretrain_makes_a_model_that_predict_finds(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The whole recipe on 5 coarse phantoms and 2 steps: phantoms, plan, preprocess, fold 0, export to
    the cache; then ``predict -m synthetic`` uses it, and a second pretrain refuses to overwrite it."""
    monkeypatch.setattr(builtin, "SHIPPED_DIR", tmp_path / "shipped")
    monkeypatch.chdir(tmp_path)
    s = settings_in(tmp_path)
    recipe = replace(RECIPES["synthetic"], cases=5, steps=2, spacing_range=((8.0, 8.0, 8.0), (8.0, 8.0, 8.0)),
                     plan_args=("--cpu-gflops", "50"), folds=(0,), train_args=())  # one plain fold first
    out = pretrain(recipe, s, tmp_path / "work")
    assert out == s.cache / "models" / "synthetic.zip" and out.is_file()
    from autoseg.inference.model import open_model
    from autoseg.inference.postprocessing import load_postprocessing

    shipped = load_postprocessing(open_model(out))  # the recipe's one-organ rule; these phantoms did not choose it
    assert shipped is not None and shipped.keep_largest_foreground and "The recipe adds" in shipped.rule
    assert shipped.evidence["all foreground"].enabled
    case = generate_trunk_case(99, spacing=(8.0, 8.0, 8.0))
    from autoseg.io import write_image

    write_image(tmp_path / "ct.nii.gz", case.image, case.geometry)
    monkeypatch.setenv("AUTOSEG_CACHE", str(s.cache))
    assert main(["predict", "-i", str(tmp_path / "ct.nii.gz"), "-o", str(tmp_path / "out"), "-m", "synthetic",
                 "--device", "cpu"]) == 0
    labels, _ = read_label(tmp_path / "out" / "ct.nii.gz")
    assert labels.shape == case.labels.shape and int(labels.max()) <= 3
    assert "edge_context" not in json.loads((tmp_path / "out" / "ct.report.json").read_text())  # none applied
    assert main(["predict", "-i", str(tmp_path / "ct.nii.gz"), "-o", str(tmp_path / "out_e"), "-m", "synthetic",
                 "--device", "cpu", "--edge-context", "0.25"]) == 0
    from autoseg.sliding_window import edge_context_of

    applied = edge_context_of(open_model(out).plans, 0.25)  # 0 where these plans do not mirror along z
    assert json.loads((tmp_path / "out_e" / "ct.report.json").read_text()).get("edge_context") == (applied or None)
    with pytest.raises(ConfigurationError, match="exists") as err:
        pretrain(recipe, s, tmp_path / "work")
    assert "--force" in str(err.value)
    out.unlink()  # another recipe in the same work folder: its trained fold is not exported as this one
    with pytest.raises(ConfigurationError, match="2 steps, not the recipe's 3") as err:
        pretrain(replace(recipe, steps=3), s, tmp_path / "work")
    assert "--force" in str(err.value) and "other plans" not in str(err.value) and not out.exists()
    with pytest.raises(ConfigurationError, match=r"another recipe \(threads differ"):  # the stamp's fields
        pretrain(replace(recipe, threads=1), s, tmp_path / "work")
    raw = sorted((tmp_path / "work" / "raw").rglob("*"))
    before = {f: f.stat().st_mtime_ns for f in raw}
    with pytest.raises(ConfigurationError, match=r"another recipe \(phantom_generator differ") as err:
        pretrain(replace(recipe, trunk_version=4), s, tmp_path / "work")  # refused before a phantom is drawn
    assert "another --work" in str(err.value)
    assert sorted((tmp_path / "work" / "raw").rglob("*")) == raw and all(f.stat().st_mtime_ns == t
                                                                          for f, t in before.items())
    stamp = tmp_path / "work" / "recipe.json"  # a fold trained on an older generator's phantoms
    stamp.write_text(json.dumps({**json.loads(stamp.read_text()), "phantom_generator": "trunk v2"}))
    with pytest.raises(ConfigurationError, match=r"another recipe \(phantom_generator differ"):
        pretrain(recipe, s, tmp_path / "work")
    fold = tmp_path / "work" / "results" / "Task100_LiverVesselTumour" / "arunet" / "fold_0"
    (fold / "checkpoint_final.pt").unlink()  # an interrupted run: resumed only when it is this recipe's
    with pytest.raises(ConfigurationError, match=r"holds a run of another recipe \(phantom_generator"):
        pretrain(recipe, s, tmp_path / "work")
    stamp.write_text(json.dumps(recipe_stamp(recipe)))
    assert pretrain(recipe, s, tmp_path / "work") == out and out.is_file()
    assert (fold / "checkpoint_final.pt").is_file()
    # The recipe's own folds and flags (two folds trained with edge context): not the fold trained above,
    # and then both folds trained with the flag, decided on together and exported as one model that
    # predicts with their ensemble.
    ensemble = replace(recipe, folds=RECIPES["synthetic"].folds, train_args=RECIPES["synthetic"].train_args)
    assert ensemble.folds == (0, 1) and ensemble.train_args == ("--edge-context", "0.25")
    out.unlink()
    with pytest.raises(ConfigurationError, match=r"another recipe \(folds, train_args differ"):
        pretrain(ensemble, s, tmp_path / "work")
    shutil.rmtree(tmp_path / "work" / "results")
    assert pretrain(ensemble, s, tmp_path / "work") == out
    model = open_model(out)
    assert model.folds == (0, 1) and model.plans.recipe.edge_context == 0.25
    assert load_postprocessing(model).keep_largest_foreground
    # Made again, the folds trained with the recipe's flags are its own (their plans carry the flags'
    # changes): finished ones kept, an interrupted second fold resumed, none trained again.
    out.unlink()
    second = fold.parent / "fold_1"
    kept = (fold / "checkpoint_final.pt").stat().st_mtime_ns
    (second / "checkpoint_final.pt").unlink()
    assert pretrain(ensemble, s, tmp_path / "work") == out
    assert (second / "checkpoint_final.pt").is_file() and (fold / "checkpoint_final.pt").stat().st_mtime_ns == kept
    out.unlink()
    assert pretrain(ensemble, s, tmp_path / "work") == out


def test_a_built_in_model_predicts_with_its_recipes_edge_context(tmp_path: Path,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    """`-m synthetic` (and the viewer's default) slides with the recipe's mirrored edge context unless
    --edge-context is given; a model named by its path, or a path that shadows the name, gets none,
    unless it was trained with edge context: then it gets what it was trained with."""
    from autoseg.builtin import default_edge_context
    from tests.test_plans import make_plans

    plans = make_plans()
    trained = plans.replace(recipe=replace(plans.recipe, edge_context=0.125))
    monkeypatch.chdir(tmp_path)
    assert default_edge_context(Path("synthetic"), plans) == RECIPES["synthetic"].edge_context == 0.0
    monkeypatch.setitem(RECIPES, "synthetic", replace(RECIPES["synthetic"], edge_context=0.25))
    assert default_edge_context(Path("synthetic"), plans) == 0.25
    assert default_edge_context(Path("model.zip"), plans) == 0.0 and default_edge_context(None, plans) == 0.0
    assert default_edge_context(Path("model.zip"), trained) == default_edge_context(None, trained) == 0.125
    assert default_edge_context(Path("synthetic"), trained) == 0.125  # what it was trained with first
    assert default_edge_context(None, (trained, trained)) == 0.125  # an ensemble's members agree
    with pytest.raises(ConfigurationError, match="--edge-context"):
        default_edge_context(None, (plans, trained))  # they do not: no share reproduces their validations
    (tmp_path / "synthetic").mkdir()  # a folder called synthetic wins over the built-in name, as in resolve_model
    assert default_edge_context(Path("synthetic"), plans) == 0.0


def test_the_recipe_plans_the_same_network_on_a_fast_and_a_slow_cpu(monkeypatch: pytest.MonkeyPatch) -> None:
    """The built-in model's plan must not follow the training machine's calibration (an EPYC planned a
    48 x 48 x 80 patch where a Xeon planned 64 x 64 x 80, and the two models differed on real CT): the
    recipe's plan flags give the same plan under any calibration, where the plain CPU plan does not."""
    from autoseg.cli import build_parser
    from autoseg.planners import cost
    from autoseg.planners.planner import PlannerOptions, plan

    # the trunk phantoms' median spacing and shape after cropping, and their classes
    trunk = dict(fingerprint(spacing=(3.94, 3.22, 3.22), shape=(71, 73, 105), n=20),
                 dataset_name="Task100_LiverVesselTumour",
                 labels={"0": "background", "1": "liver", "2": "vessel", "3": "tumour"})
    recipe = RECIPES["synthetic"]
    pinned = build_parser().parse_args(["plan_and_preprocess", "-d", recipe.dataset, *recipe.plan_args])

    def plans_on(flops_per_s: float, cpu_gflops: float | None):
        machine = cost.CpuTimeModel(flops_per_s, 1.5e-6, "a test machine", 1.5, 2)
        monkeypatch.setattr(cost, "calibrate", lambda *a, **k: machine)
        return plan(trunk, PlannerOptions(device="cpu", base_features=recipe.features, cpu_gflops=cpu_gflops))

    slow, fast = plans_on(1.5e11, pinned.cpu_gflops), plans_on(6e11, pinned.cpu_gflops)
    assert (slow.patch_size, slow.batch_size, slow.target_spacing) == (fast.patch_size, fast.batch_size,
                                                                       fast.target_spacing)
    assert slow.patch_size == (64, 64, 80)
    assert plans_on(1.5e11, None).patch_size != plans_on(6e11, None).patch_size  # what the pin is for


def test_the_recipe_stamp_records_the_generator_version_as_it_always_has() -> None:
    """A work folder stamped before ``Recipe.trunk_version`` existed stays current (the version was and
    is stamped as ``phantom_generator``); a recipe on another version is another recipe."""
    from autoseg.phantom_trunk import TRUNK_VERSION

    recipe = RECIPES["synthetic"]
    assert recipe.trunk_version == TRUNK_VERSION, "the generator's default is the built-in model's version"
    stamp = recipe_stamp(recipe)
    assert stamp["phantom_generator"] == f"trunk v{recipe.trunk_version}" and "trunk_version" not in stamp
    other = recipe_stamp(replace(recipe, trunk_version=4))
    assert [k for k in stamp if stamp[k] != other[k]] == ["phantom_generator"]


def test_pretrain_takes_the_trunk_version_and_refuses_an_unknown_one(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                                     capsys: pytest.CaptureFixture[str]) -> None:
    """``--trunk-version`` replaces the recipe's generator version (and so its stamp); an unknown version is
    refused before anything is written."""
    import autoseg.pretrain as pretrain_module

    seen: list[builtin.Recipe] = []
    monkeypatch.setattr(pretrain_module, "pretrain", lambda recipe, settings, work, force=False: seen.append(recipe)
                        or work / "model.zip")
    monkeypatch.setenv("AUTOSEG_CACHE", str(tmp_path / "cache"))
    assert main(["pretrain", "synthetic", "--work", str(tmp_path / "w"), "--trunk-version", "4", "--seed", "1"]) == 0
    assert seen[-1].trunk_version == 4 and seen[-1].seed == 1
    assert recipe_stamp(seen[-1])["phantom_generator"] == "trunk v4"
    assert main(["pretrain", "synthetic", "--work", str(tmp_path / "w")]) == 0
    assert seen[-1] == RECIPES["synthetic"]
    monkeypatch.undo()
    monkeypatch.setenv("AUTOSEG_CACHE", str(tmp_path / "cache"))
    (tmp_path / "cache" / "models").mkdir(parents=True)
    (tmp_path / "cache" / "models" / "synthetic.zip").write_bytes(b"x")  # the version is checked before this
    capsys.readouterr()
    assert main(["pretrain", "synthetic", "--work", str(tmp_path / "w2"), "--trunk-version", "99"]) == 2
    err = capsys.readouterr().err
    assert "trunk generator version 99 does not exist" in err and "--trunk-version 3, 4 or 5" in err, err
    assert not (tmp_path / "w2").exists()
