import pytest
import yaml

from fedgen.config import ExperimentConfig, load_config, read_yaml
from fedgen.errors import ConfigError


def test_defaults_are_the_default_experiment():
    cfg = load_config()
    assert cfg.data.sources == ["fashion-mnist"]
    assert cfg.data.num_clients == 10
    assert cfg.data.partition.kind == "dirichlet"
    assert cfg.data.partition.params == {"alpha": 0.5}
    assert cfg.task.name == "cgan" and cfg.strategy.name == "fedavg"


def test_shipped_recipe_matches_the_defaults():
    assert load_config("configs/fmnist_cgan.yaml").fingerprint() == load_config().fingerprint()


def test_the_default_experiment_reads_its_examples_in_small_steps_and_recipes_do_not():
    # The default experiment's own settings, beyond the fields' defaults.
    cfg = load_config()
    assert cfg.federation.local_steps == 120 and cfg.task.params == {"batch_size": 16}
    assert cfg.federation.rounds == 100
    # Overrides change them where they name them, and keep the rest.
    cfg = load_config(None, ["task.params={latent_dim: 32}", "federation.local_steps=7"])
    assert cfg.task.params == {"latent_dim": 32, "batch_size": 16}
    assert cfg.federation.local_steps == 7
    assert load_config(None, ["task.params.batch_size=64"]).task.params == {"batch_size": 64}
    # Another task starts from its own defaults, as before.
    cvae = load_config(None, ["task.name=cvae"])
    assert cvae.task.params == {} and cvae.federation.local_steps == 30
    assert cvae.federation.rounds == 60
    # A local budget in epochs replaces the default's steps.
    cfg = load_config(None, ["federation.local_steps=null", "federation.local_epochs=1.0"])
    assert cfg.federation.local_steps is None and cfg.federation.local_epochs == 1.0
    # The fields keep 30 steps of the task's own batch: a recipe that omits them means
    # what it meant before the default experiment changed.
    assert ExperimentConfig().federation.local_steps == 30
    assert ExperimentConfig().task.params == {} and ExperimentConfig().federation.rounds == 60


def test_dotted_overrides_parse_yaml_values():
    cfg = load_config(
        None,
        ["federation.rounds=3", "data.partition.params.alpha=0.1", "task.params={latent_dim: 32}"],
    )
    assert cfg.federation.rounds == 3
    assert cfg.data.partition.params["alpha"] == 0.1
    assert cfg.task.params == {"latent_dim": 32, "batch_size": 16}  # the default's batch


def test_unknown_key_names_the_key_and_the_allowed_keys():
    with pytest.raises(ConfigError) as err:
        load_config(None, ["federation.round=3"])
    msg = str(err.value)
    assert "federation.round" in msg and "rounds" in msg and "local_steps" in msg


def test_wrong_type_names_the_key():
    with pytest.raises(ConfigError, match=r"federation\.rounds"):
        load_config(None, ["federation.rounds=many"])


def test_unknown_component_lists_the_choices():
    with pytest.raises(ConfigError, match=r"choose from.*cgan.*cvae"):
        load_config(None, ["task.name=gpt"])
    with pytest.raises(ConfigError, match=r"choose from.*dirichlet.*iid"):
        load_config(None, ["data.partition.kind=random"])


def test_bad_component_params_are_all_reported_together():
    with pytest.raises(ConfigError) as err:
        load_config(
            None,
            ["task.params.widht=3", "strategy.params.fractoin=0.5", "data.partition.params.beta=1"],
        )
    msg = str(err.value)
    assert "task.params.widht" in msg
    assert "strategy.params.fractoin" in msg and "fraction" in msg
    assert "data.partition.params.beta" in msg and "alpha" in msg


def test_exactly_one_local_budget():
    with pytest.raises(ConfigError, match="exactly one"):
        load_config(None, ["federation.local_epochs=1"])
    cfg = load_config(None, ["federation.local_epochs=1", "federation.local_steps=null"])
    assert cfg.federation.local_epochs == 1


def test_malformed_yaml_and_missing_file(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("data: [unclosed\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(bad)
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(tmp_path / "nope.yaml")
    with pytest.raises(ConfigError, match=r"dotted\.key=value"):
        load_config(None, ["rounds"])


def test_a_key_given_twice_is_an_error_not_the_last_one_kept(tmp_path):
    # A second section would silently reset the first one's settings to defaults.
    twice = tmp_path / "twice.yaml"
    twice.write_text("federation:\n  rounds: 5\nfederation:\n  local_steps: 3\n")
    with pytest.raises(ConfigError, match="'federation' twice"):
        load_config(twice)
    with pytest.raises(ConfigError, match="'rounds' twice"):
        load_config(None, ["federation={rounds: 5, rounds: 6}"])
    # A merge key's defaults may still be overridden beside it.
    merged = read_yaml("a: &d {x: 1, y: 2}\nb:\n  <<: *d\n  x: 3\n", "test")
    assert merged["b"] == {"x": 3, "y": 2}
    # and a merged mapping that itself merges (flattened in place before it is read).
    text = (
        "task:\n  params: &s\n    <<: {batch_size: 32, lr: 0.001}\n    batch_size: 64\n"
        "downstream:\n  <<: *s\n  rounds: 5\n"
    )
    assert read_yaml(text, "t") == yaml.safe_load(text)  # whatever PyYAML makes of it


def test_where_the_data_lies_is_no_part_of_the_fingerprint_but_old_runs_still_match():
    # A run moved to another machine (its data elsewhere) is the same experiment.
    here = load_config(None, ["data.data_dir=/a"])
    there = load_config(None, ["data.data_dir=/b"])
    assert here.fingerprint() == there.fingerprint() == load_config().fingerprint()
    # A run from before 2026-12-07 hashed its data_dir: still accepted where it was.
    legacy = here.fingerprints()[1]
    assert legacy != here.fingerprint() and legacy not in there.fingerprints()
    assert load_config().fingerprints() == (load_config().fingerprint(),)


def test_fingerprint_ignores_rounds_and_eval_but_not_training():
    base = load_config()
    assert (
        base.fingerprint()
        == load_config(None, ["federation.rounds=99", "eval.every=1"]).fingerprint()
    )
    assert base.fingerprint() != load_config(None, ["seed=1"]).fingerprint()


def test_a_new_optional_setting_leaves_existing_runs_fingerprints_alone():
    # The default recipe's fingerprint as of 2026-12-01 (unchanged since the fields it
    # hashes were last changed on purpose). A new config field that is absent by default
    # must not change it, or every earlier run folder refuses to resume or be sampled
    # from: pop it in ExperimentConfig.fingerprint while it is unset, as the others are.
    assert ExperimentConfig().fingerprint() == "25361a9e4480189d"


def test_every_recipe_in_configs_validates():
    from pathlib import Path

    recipes = sorted(Path("configs").glob("*.yaml"))
    assert recipes
    for recipe in recipes:
        load_config(recipe)


def test_dpsgd_section_is_optional_and_leaves_the_default_fingerprint_alone():
    from fedgen.config import ExperimentConfig, load_config

    # The default experiment's fingerprint from before DP-SGD existed (checkpoints
    # of such runs must still resume).
    assert ExperimentConfig().fingerprint() == "25361a9e4480189d"
    cfg = load_config(None, ["dpsgd={epsilon: 10, max_grad_norm: 1.0, delta: 1e-5}"])
    assert cfg.dpsgd is not None and cfg.dpsgd.delta == 1e-5  # YAML's "1e-5" string
    assert cfg.fingerprint() != ExperimentConfig().fingerprint()
    # The DP-SGD recipe's fingerprint from before dpsgd.rounds_per_client and
    # noise_per_client existed (the recipe sets both since, and the PRV accountant;
    # without them, runs of the old recipe still resume); each, once set, is part of it.
    # (The mode-seeking term came later still, in task.params.)
    old = [
        "dpsgd.accountant=rdp",
        "dpsgd.noise_per_client=false",
        "task.params={fake_labels: uniform, d_steps: 5}",
        "strategy.params={fraction: 0.4, ema_decay: 0.9}",
    ]
    recipe = load_config("configs/mnist_cgan_dpsgd.yaml", [*old, "dpsgd.rounds_per_client=null"])
    assert recipe.dpsgd is not None and recipe.dpsgd.rounds_per_client is None
    assert recipe.fingerprint() == "154a22331ab964e1"
    capped = load_config("configs/mnist_cgan_dpsgd.yaml", old)
    assert capped.dpsgd is not None and capped.dpsgd.rounds_per_client == 15
    assert capped.fingerprint() != recipe.fingerprint()
    per_client = load_config("configs/mnist_cgan_dpsgd.yaml", ["dpsgd.accountant=rdp"])
    assert per_client.dpsgd is not None and per_client.dpsgd.noise_per_client
    assert per_client.fingerprint() != capped.fingerprint()


def test_dpsgd_unknown_key_names_the_allowed_ones():
    import pytest

    from fedgen.config import load_config
    from fedgen.errors import ConfigError

    with pytest.raises(ConfigError, match=r"dpsgd\.epsilonn") as info:
        load_config(None, ["dpsgd={epsilonn: 10}"])
    assert "max_grad_norm" in str(info.value)


def test_a_partition_named_without_params_gets_its_own_defaults_not_dirichlets():
    # The default params ({alpha: 0.5}) are the default kind's; another kind named alone
    # must not inherit them (its partitioner would refuse alpha as an unknown key).
    assert load_config(None, []).data.partition.params == {"alpha": 0.5}
    for kind in ("iid", "table_silos"):
        cfg = load_config(None, [f"data.partition={{kind: {kind}}}"])
        assert cfg.data.partition.params == {}
    cfg = load_config(None, ["data.partition={kind: dirichlet}"])
    assert cfg.data.partition.params == {"alpha": 0.5}


@pytest.mark.parametrize(
    "item", ["federation.rounds=true", "data.num_clients=true", "federation.local_steps=false"]
)
def test_a_boolean_where_a_number_belongs_is_refused(item):
    # Pydantic alone reads true as 1: `federation.rounds=true` ran one round.
    with pytest.raises(ConfigError, match="is a boolean; give a number"):
        load_config(None, [item])


@pytest.mark.parametrize("name", ["''", "../escaped", "a/b", ".hidden", "x" * 121])
def test_a_name_that_is_not_one_folder_name_is_refused(name):
    with pytest.raises(ConfigError, match="names the run folder"):
        load_config(None, [f"name={name}"])
