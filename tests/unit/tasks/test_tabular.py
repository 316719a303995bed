"""Table tasks: built from a table's encoder, trained locally, sampled with or without a
condition; a category absent from training is a clear error."""

from __future__ import annotations

import dataclasses

import numpy as np
import pandas as pd
import pytest
import torch

from fedgen.data.table_data import SiloPartition
from fedgen.modality import Conditioning, DataSpec, Modality
from fedgen.registry import EVALUATORS, SAMPLE_WRITERS, TASKS
from fedgen.tasks.tabular import CtganTask, TvaeTask
from fedgen.tasks.tabular.base import draw_conditions
from fedgen.tasks.tabular.condition_block import condition_block


@pytest.fixture(scope="module")
def fair():
    return SiloPartition(max_modes=3).federate("fair", 2, seed=0)


def _task(cls, fair, **params):
    return cls.from_spec(cls.Params(batch_size=100, hidden=32, **params), fair.spec(), 0)


def test_table_tasks_are_registered_with_their_modality_and_handlers():
    for name in ("tvae", "ctgan"):
        cls = TASKS.get(name)
        assert cls.modality == Modality.TABLES and cls.conditioning == Conditioning.COLUMN
    assert "tables" in EVALUATORS and "tables" in SAMPLE_WRITERS


def test_a_table_task_refuses_other_data():
    with pytest.raises(ValueError, match="generates tables, but the data is images"):
        TvaeTask.from_spec(TvaeTask.Params(), DataSpec(Modality.IMAGES, 10, (1, 28, 28)), 0)
    with pytest.raises(ValueError, match="multiple of pac"):
        CtganTask.Params(batch_size=105, pac=10)


@pytest.mark.parametrize("cls", [TvaeTask, CtganTask])
def test_local_training_lowers_the_loss_and_sampling_gives_rows_of_the_schema(cls, fair):
    task = _task(cls, fair)
    client = fair.clients[0]
    gen = torch.Generator().manual_seed(0)
    before = {k: v.clone() for k, v in task.federated_state().items()}
    metrics = task.train_local(client, 30, gen, {})
    assert all(torch.isfinite(torch.tensor(v)) for v in metrics.values())
    assert any(not torch.equal(before[k], v) for k, v in task.federated_state().items())
    rows = task.sample(50, gen)
    assert isinstance(rows, pd.DataFrame) and len(rows) == 50
    assert list(rows.columns) == fair.schema.names
    assert set(rows["had_affair"]) <= {"yes", "no"}
    assert rows["age"].between(17.5, 42.0).all()


def test_ctgan_samples_rows_conditioned_on_a_columns_value(fair):
    task = _task(CtganTask, fair)
    task.train_local(fair.clients[0], 20, torch.Generator().manual_seed(0), {})
    rows = task.sample((30, {"had_affair": "yes"}), torch.Generator().manual_seed(1))
    assert len(rows) == 30 and (rows["had_affair"] == "yes").all()


def test_tvae_samples_conditioned_rows_by_filtering(fair):
    # TVAE takes no conditional vector: its rows are generated and kept when they match.
    task = _task(TvaeTask, fair)
    task.train_local(fair.clients[0], 30, torch.Generator().manual_seed(0), {})
    rows = task.sample((30, {"had_affair": "yes"}), torch.Generator().manual_seed(1))
    assert len(rows) == 30 and (rows["had_affair"] == "yes").all()
    assert list(rows.columns) == fair.schema.names
    # Too few matching rows are a clear error, not fewer rows: see
    # test_conditioned_sampling_scales_its_batches_with_n_and_stays_bounded.


def test_a_conditional_tvae_reads_its_column_and_generates_rows_for_drawn_categories(fair):
    # Prepare: TVAE conditioned on the target; its decoder reads the latent and the
    # target's one-hot (2 categories).
    task = _task(TvaeTask, fair, condition_on="had_affair", latent_dim=8)
    assert task.modules["decoder"].net[0].in_features == 8 + 2
    task.train_local(fair.clients[0], 20, torch.Generator().manual_seed(0), {})
    # Execute: rows drawn without a condition, and asked for one category.
    free = task.sample(4000, torch.Generator().manual_seed(1))
    asked = task.generate(
        50, torch.Generator().manual_seed(2), task.condition_index("had_affair", "yes")
    )
    # Assert: unconditioned rows hold the target in its training share (the encoder's
    # pooled counts), within four standard errors; asked rows hold the asked category.
    enc = task.encoder.encoding("had_affair")
    share = enc.counts[enc.index("yes")] / enc.counts.sum()
    got = (free["had_affair"] == "yes").mean()
    assert abs(got - share) < 4 * (share * (1 - share) / 4000) ** 0.5
    block = task.condition
    assert block is not None
    one_hot = asked[:, block.starts[0] : block.starts[0] + block.width]
    assert torch.equal(one_hot, torch.tensor([[0.0, 1.0]] * 50))  # categories sorted: no, yes
    rows = task.sample((20, {"had_affair": "yes"}), torch.Generator().manual_seed(3))
    assert (rows["had_affair"] == "yes").all()


@pytest.mark.parametrize("cls", [TvaeTask, CtganTask])
def test_a_conditional_model_refuses_a_column_it_cannot_condition_on(fair, cls):
    with pytest.raises(ValueError, match=r"condition_on names 'age', which is no categorical.*"):
        _task(cls, fair, condition_on="age")


def test_a_tvae_conditioned_on_two_columns_draws_them_jointly(fair):
    # Prepare: TVAE conditioned on the silo column and the target, whose pooled joint
    # counts the encoder merged from the clients' contingency tables.
    task = _task(TvaeTask, fair, condition_on=["occupation", "had_affair"], latent_dim=8)
    joint = task.encoder.joint_counts("occupation", "had_affair")
    assert joint is not None and joint.shape == (6, 2)
    assert task.modules["decoder"].net[0].in_features == 8 + 6 + 2
    task.train_local(fair.clients[0], 10, torch.Generator().manual_seed(0), {})
    n = 6000
    # Execute: rows drawn freely, and rows asked to have had an affair.
    free = task.sample(n, torch.Generator().manual_seed(1))
    asked = task.sample((n, {"had_affair": "yes"}), torch.Generator().manual_seed(2))
    # Assert: every (occupation, had_affair) cell in its pooled joint share, within four
    # standard errors; asked rows hold the asked category and occupations in their
    # shares among those who had one (drawn apart, they would follow the marginal).
    occupations = task.encoder.encoding("occupation").categories
    shares = joint / joint.sum()
    for i, occupation in enumerate(occupations):
        for j, answer in enumerate(("no", "yes")):
            got = ((free["occupation"] == occupation) & (free["had_affair"] == answer)).mean()
            p = shares[i, j]
            assert abs(got - p) < 4 * (p * (1 - p) / n) ** 0.5 + 1e-9, (occupation, answer)
    assert (asked["had_affair"] == "yes").all()
    given = joint[:, 1] / joint[:, 1].sum()
    for i, occupation in enumerate(occupations):
        got = (asked["occupation"] == occupation).mean()
        assert abs(got - given[i]) < 4 * (given[i] * (1 - given[i]) / n) ** 0.5 + 1e-9


def test_two_columns_need_the_encoders_joint_counts(fair):
    # An encoder fitted before clients sent joint counts (a saved one) holds none.
    older = dataclasses.replace(_task(TvaeTask, fair).encoder, pairs={})
    with pytest.raises(ValueError, match="no joint counts of them"):
        condition_block(older, ["occupation", "had_affair"])


@pytest.mark.parametrize(
    ("columns", "message"),
    [
        (["occupation", "had_affair", "religious"], "name one categorical column, or two"),
        (["had_affair", "had_affair"], "two different ones"),
        (["occupation", "age"], "'age', which is no categorical"),
    ],
    ids=["three", "twice", "numeric"],
)
def test_conditioning_on_columns_that_cannot_be_drawn_jointly_is_refused(fair, columns, message):
    with pytest.raises(ValueError, match=message):
        _task(TvaeTask, fair, condition_on=columns)


def test_ctgan_conditioned_on_one_column_names_only_that_column(fair):
    # Prepare: CTGAN whose conditional vectors name the target only.
    task = _task(CtganTask, fair, condition_on="had_affair")
    target = [enc.name for enc, _ in task.encoder.categorical()].index("had_affair")
    offset = task._cond_offsets()[target]
    # Execute: training-by-sampling's draws, and the conditions of generated rows.
    cond, columns, categories, rows = task._training_conditions(
        fair.clients[0], 400, np.random.default_rng(0)
    )
    generated = task.generate(400, torch.Generator().manual_seed(1), None)
    # Assert: every training condition is the target's, and its real row holds that
    # category; both categories are asked (log-frequencies).
    assert columns.shape == categories.shape == (400, 1)
    assert (columns == target).all() and set(categories[:, 0].tolist()) == {0, 1}
    assert torch.equal(cond.sum(dim=1), torch.ones(400))
    assert torch.equal(cond[:, offset : offset + 2].sum(dim=1), torch.ones(400))
    codes = fair.clients[0].codes["had_affair"]
    assert (codes[rows] == categories[:, 0]).all()
    assert generated.shape == (400, task.encoder.dim)
    # Generation's conditions name the target alone, by the merged frequencies.
    drawn = draw_conditions(
        4000,
        task.encoder.categorical(),
        task._cond_offsets(),
        task.cond_dim,
        None,
        torch.Generator().manual_seed(2),
        only=target,
    )
    yes = drawn[:, offset + 1].mean().item()
    enc = task.encoder.encoding("had_affair")
    share = enc.counts[1] / enc.counts.sum()
    assert drawn[:, offset : offset + 2].sum().item() == 4000
    assert abs(yes - share) < 4 * (share * (1 - share) / 4000) ** 0.5


def test_ctgan_conditioned_on_two_columns_names_both_in_every_vector(fair):
    # Prepare: CTGAN whose conditional vectors name the silo column and the target.
    task = _task(CtganTask, fair, condition_on=["occupation", "had_affair"])
    names = [enc.name for enc, _ in task.encoder.categorical()]
    silo, target = names.index("occupation"), names.index("had_affair")
    offsets = task._cond_offsets()
    data = fair.clients[1]
    # Execute: training-by-sampling's draws on one client.
    cond, columns, categories, rows = task._training_conditions(
        data, 2000, np.random.default_rng(0)
    )
    # Assert: every vector holds one category of each column and nothing else, its real
    # row holds both, and the cells asked are those the client holds, by log-frequency.
    assert columns.shape == categories.shape == (2000, 2)
    assert (columns == [silo, target]).all()
    assert torch.equal(cond.sum(dim=1), torch.full((2000,), 2.0))
    assert torch.equal(cond[torch.arange(2000), offsets[silo] + categories[:, 0]], torch.ones(2000))
    assert torch.equal(
        cond[torch.arange(2000), offsets[target] + categories[:, 1]], torch.ones(2000)
    )
    held_silo, held_target = data.codes["occupation"], data.codes["had_affair"]
    assert (held_silo[rows] == categories[:, 0]).all()
    assert (held_target[rows] == categories[:, 1]).all()
    width = task.encoder.encoding("had_affair").width
    counts = np.bincount(held_silo * width + held_target, minlength=6 * width)
    asked = np.bincount(categories[:, 0] * width + categories[:, 1], minlength=6 * width)
    assert set(np.flatnonzero(asked)) == set(np.flatnonzero(counts))
    p = np.log1p(counts) / np.log1p(counts).sum()
    assert np.all(np.abs(asked / 2000 - p) < 4 * np.sqrt(p * (1 - p) / 2000) + 1e-9)


def test_ctgan_conditioned_on_two_columns_generates_from_their_pooled_cells(fair):
    # Prepare: the pair's pooled joint counts, merged from the clients' tables.
    task = _task(CtganTask, fair, condition_on=["occupation", "had_affair"])
    joint = task.encoder.joint_counts("occupation", "had_affair")
    assert joint is not None
    names = [enc.name for enc, _ in task.encoder.categorical()]
    silo, target = names.index("occupation"), names.index("had_affair")
    o_silo, o_target = task._cond_offsets()[silo], task._cond_offsets()[target]
    n = 6000
    # Execute: the conditions of rows drawn freely and of rows asked to have had an affair.
    free = task.generation_conditions(n, torch.Generator().manual_seed(1), None)
    yes = task.generation_conditions(n, torch.Generator().manual_seed(2), (target, 1))
    # Assert: every cell in its pooled share within four standard errors; asked rows
    # name "yes" and occupations in their shares among those who said yes (drawn apart,
    # they would follow the marginal).
    assert torch.equal(free.sum(dim=1), torch.full((n,), 2.0))
    cells = free[:, o_silo : o_silo + 6].argmax(1) * 2 + free[:, o_target : o_target + 2].argmax(1)
    shares = (joint / joint.sum()).reshape(-1)
    got = np.bincount(cells.numpy(), minlength=12) / n
    assert np.all(np.abs(got - shares) < 4 * np.sqrt(shares * (1 - shares) / n) + 1e-9)
    assert torch.equal(yes[:, o_target + 1], torch.ones(n))
    given = joint[:, 1] / joint[:, 1].sum()
    got = yes[:, o_silo : o_silo + 6].mean(0).numpy()
    assert np.all(np.abs(got - given) < 4 * np.sqrt(given * (1 - given) / n) + 1e-9)
    rows = task.sample(50, torch.Generator().manual_seed(3))
    assert len(rows) == 50


@pytest.mark.parametrize(
    "condition_on", ["had_affair", ["occupation", "had_affair"]], ids=["one", "pair"]
)
def test_ctgan_asked_for_another_column_draws_the_conditions_it_trained_on(fair, condition_on):
    # Prepare: every training vector holds one category of each condition_on column.
    task = _task(CtganTask, fair, condition_on=condition_on)
    block = task.condition
    assert block is not None
    offsets = task._cond_offsets()
    asked = task.condition_index("religious", "3")
    # Execute: the conditions of rows asked for a column outside condition_on.
    cond = task.generation_conditions(500, torch.Generator().manual_seed(0), asked)
    # Assert: each condition_on column's slot sums to 1 in every row and nothing else is
    # set (the asked column's one-hot alone is an input the generator never saw); the
    # asked category is met by filtering.
    for index, width in zip(block.indices, block.widths, strict=True):
        slot = cond[:, offsets[index] : offsets[index] + width]
        assert torch.equal(slot.sum(dim=1), torch.ones(500)), task.encoder.categorical()[index]
    assert torch.equal(cond.sum(dim=1), torch.full((500,), float(len(block.indices))))
    rows = task.sample((20, {"religious": "3"}), torch.Generator().manual_seed(1))
    assert len(rows) == 20 and (rows["religious"] == "3").all()


def _generating(fair, task, value: str, every: int = 1):
    """A stand-in for ``task.generate``: real encoded rows holding ``had_affair ==
    value``, one row in ``every`` (the rest the other answer); the batch sizes asked
    are recorded in its ``calls``."""
    client = fair.clients[0]
    index = task.encoder.encoding("had_affair").index(value)
    match = client.encoded[client.codes["had_affair"] == index]
    other = client.encoded[client.codes["had_affair"] != index]
    calls: list[int] = []

    def generate(n: int, generator: torch.Generator, condition: object) -> torch.Tensor:
        made = sum(calls)
        calls.append(n)
        hits = (made + torch.arange(n)) % every == 0
        rows = other[torch.arange(n) % len(other)].clone()
        rows[hits] = match[torch.arange(int(hits.sum())) % len(match)]
        return rows

    generate.calls = calls  # type: ignore[attr-defined]
    return generate


def test_conditioned_sampling_scales_its_batches_with_n_and_stays_bounded(fair, monkeypatch):
    # Prepare: a model whose every row matches, sampling 10 rows a batch.
    task = _task(TvaeTask, fair, sample_batch=10)
    every_row = _generating(fair, task, "yes")
    monkeypatch.setattr(task, "generate", every_row)
    # Execute / Assert: 600 rows need 60 batches, more than a fixed 50 would allow.
    rows = task.sample((600, {"had_affair": "yes"}), torch.Generator().manual_seed(0))
    assert len(rows) == 600 and (rows["had_affair"] == "yes").all()
    assert every_row.calls == [10] * 60
    # A condition that never matches fails after 50 batches, with what to do.
    never = _generating(fair, task, "no")
    monkeypatch.setattr(task, "generate", never)
    with pytest.raises(ValueError, match=r"generated only 0 rows with had_affair == 'yes' in 50"):
        task.sample((600, {"had_affair": "yes"}), torch.Generator().manual_seed(0))
    assert len(never.calls) == 50
    # One row in 100 matching cannot fill 600 rows within 50 x 60 batches: refused once
    # the first 50 batches show the rate, not after the whole budget.
    rare = _generating(fair, task, "yes", every=100)
    monkeypatch.setattr(task, "generate", rare)
    with pytest.raises(ValueError, match=r"need more than the 3000 batches allowed"):
        task.sample((600, {"had_affair": "yes"}), torch.Generator().manual_seed(0))
    assert len(rare.calls) == 50
    # One row in 10 matching can: 600 rows in 600 batches.
    some = _generating(fair, task, "yes", every=10)
    monkeypatch.setattr(task, "generate", some)
    assert len(task.sample((600, {"had_affair": "yes"}), torch.Generator().manual_seed(0))) == 600
    assert len(some.calls) == 600


def test_conditioning_on_a_category_absent_from_training_is_a_clear_error(fair):
    task = _task(TvaeTask, fair)
    gen = torch.Generator().manual_seed(0)
    with pytest.raises(ValueError, match=r"no category '7' in the training rows.*'1', '2'"):
        task.sample((5, {"occupation": "7"}), gen)
    with pytest.raises(ValueError, match="'age' is not one"):
        task.sample((5, {"age": 30}), gen)


def test_table_tasks_refuse_dp_sgd(fair):
    assert "does not train through DP-SGD" in _task(TvaeTask, fair).privacy_problems()[0]


def test_tvae_draws_categories_from_its_softmax_or_takes_the_argmax(fair):
    sampled = _task(TvaeTask, fair)
    spans = [s for s in sampled.spans if s.activation == "softmax"]
    rows = sampled.generate(400, torch.Generator().manual_seed(0), None)
    for span in spans:
        block = rows[:, span.start : span.start + span.width]
        assert torch.equal(block.sum(dim=1), torch.ones(400)) and set(block.unique().tolist()) <= {
            0.0,
            1.0,
        }
    # Drawn from the likelihood, a column's categories vary even where the argmax would not.
    first = spans[0]
    drawn = rows[:, first.start : first.start + first.width].argmax(dim=1)
    assert len(drawn.unique()) > 1
    argmax = _task(TvaeTask, fair, categories="argmax")
    raw = argmax.generate(5, torch.Generator().manual_seed(0), None)
    assert not set(raw[:, first.start : first.start + first.width].unique().tolist()) <= {0.0, 1.0}


def test_tvae_functional_step_takes_train_locals_step_and_clamps_sigma(fair):
    # One step of each path from the same state and generator seed, with a learning rate
    # large enough that some standard deviations leave [0.01, 1] and are clamped back.
    task = _task(TvaeTask, fair, keep_optimizer=False)
    task.modules["decoder"].sigma.data.fill_(0.0101)
    start = {k: v.clone() for k, v in task.federated_state().items()}
    task.train_local(fair.clients[0], 1, torch.Generator().manual_seed(3), {"lr": 0.05})
    expected = task.federated_state()
    functional = task.functional_training()
    assert functional is not None
    tensors = {
        m: {k[len(m) + 1 :]: v for k, v in start.items() if k.startswith(m)}
        for m in ("encoder", "decoder")
    }
    gen = torch.Generator().manual_seed(3)
    inputs = functional.draw(fair.clients[0].batches(100, gen), gen)
    masks = {"x": torch.ones(len(inputs["x"]))}
    state = functional.init_state(tensors, {})
    new, _, losses = functional.step(tensors, state, inputs, masks, 1, {"lr": 0.05})
    sigma = new["decoder"]["sigma"]
    assert sigma.min() == 0.01  # clamped
    for module, own in new.items():
        for key, value in own.items():
            torch.testing.assert_close(value, expected[f"{module}.{key}"], atol=1e-6, rtol=0)
    assert set(losses) == {"loss/reconstruction", "loss/kl"}


@pytest.mark.parametrize("condition_on", [None, "had_affair"])
def test_tvae_batched_step_equals_the_vmapped_step_on_a_padded_group(fair, condition_on):
    # Three clients (rows of one shard) with different starts and batches of 7, 12 and 3
    # rows padded to 12:
    # the group's batched arithmetic (baddbmm, autograd of the summed losses) against
    # vmap over the one-client step, for tensors, Adam moments and per-client losses.
    from torch.func import vmap

    from fedgen.engine.backends.stacking import pad_and_stack, stack

    task = _task(TvaeTask, fair, keep_optimizer=False, condition_on=condition_on)
    functional = task.functional_training()
    assert functional is not None
    starts = []
    for c in range(3):
        torch.manual_seed(c)
        for module in task.modules.values():
            for name, p in module.named_parameters():
                if name != "sigma":  # kept positive: its log is in the likelihood
                    p.data.add_(torch.randn_like(p) * 0.05)
        starts.append({m: dict(task.modules[m].state_dict()) for m in ("encoder", "decoder")})
        starts[-1] = {m: {k: v.clone() for k, v in t.items()} for m, t in starts[-1].items()}
    draws = [
        functional.draw(
            fair.clients[0].batches(n, torch.Generator().manual_seed(c)),
            torch.Generator().manual_seed(10 + c),
        )
        for c, n in enumerate((7, 12, 3))
    ]
    inputs, masks = pad_and_stack(draws)
    tensors = stack(starts)
    state = vmap(lambda t: functional.init_state(t, {}))(tensors)
    config = {"lr": 0.01}
    by_vmap = vmap(lambda t, s, i, m: functional.step(t, s, i, m, 1, config))(
        tensors, state, inputs, masks
    )
    batched = functional.batched_step(tensors, state, inputs, masks, 1, config)
    assert batched is not None
    for got, want in zip(batched, by_vmap, strict=True):
        torch.testing.assert_close(got, want, atol=1e-6, rtol=1e-5)


@pytest.mark.parametrize("task_cls", [TvaeTask, CtganTask])
def test_table_tasks_keeping_their_optimizer_vectorize(fair, task_cls):
    # Kept Adam moments travel as private tensors through the functional step too
    # (the oracle test checks the arithmetic): nothing sends these clients sequential.
    from fedgen.engine.backends.base import LocalWork
    from fedgen.engine.backends.vectorized import why_not_vectorized

    task = _task(task_cls, fair)  # keep_optimizer: its default
    assert task.params.keep_optimizer
    work = LocalWork(task, task.federated_state(), [], 2, None)
    assert why_not_vectorized(work) is None
    # The functional state's kept tensors are the sequential path's private ones.
    functional = task.functional_training()
    tensors = {name: dict(module.state_dict()) for name, module in task.modules.items()}
    kept = functional.kept(functional.init_state(tensors, {}))
    private = task.private_state()
    assert kept.keys() == {k for k in private if k.startswith("optimizer/")} != set()
    for key, value in kept.items():
        assert torch.equal(value, private[key]), key


def test_tvae_fused_reconstruction_equals_the_per_span_likelihood(fair):
    # The fused form against the loss written span by span, as the ctgan library does.
    task = _task(TvaeTask, fair)
    x = fair.clients[0].encoded[:64]
    out = torch.randn(64, x.shape[1], generator=torch.Generator().manual_seed(0)) * 3
    sigma = torch.linspace(0.05, 0.9, x.shape[1])
    expected = torch.zeros(64)
    for span in task.spans:
        a, b = span.start, span.start + span.width
        if span.activation == "tanh":
            expected += ((x[:, a:b] - torch.tanh(out[:, a:b])) ** 2 / 2 / sigma[a:b] ** 2).sum(1)
            expected += torch.log(sigma[a:b]).sum()
        else:
            target = x[:, a:b].argmax(1)
            expected += torch.nn.functional.cross_entropy(out[:, a:b], target, reduction="none")
    assert {s.activation for s in task.spans} == {"tanh", "softmax"}
    torch.testing.assert_close(task.reconstruction(out, x, sigma), expected, rtol=1e-5, atol=1e-4)


def test_ctgan_training_by_sampling_draws_a_row_of_each_category_as_one_choice_per_row(fair):
    # The one-call draw of rows against the definition (for each row, a uniform choice
    # among the client's rows of its category, drawn in row order): the same rows from
    # the same generator, so runs of earlier commits keep their draws.
    import numpy as np

    task = _task(CtganTask, fair)
    data = fair.clients[0]
    categorical = task.encoder.categorical()
    for seed in range(5):
        cond, columns, categories, rows = task._training_conditions(
            data, 200, np.random.default_rng(seed)
        )
        rng = np.random.default_rng(seed)
        want_columns = rng.integers(len(categorical), size=200)
        want_rows = np.zeros(200, dtype=np.int64)
        for i, (enc, _) in enumerate(categorical):
            picked = np.flatnonzero(want_columns == i)
            codes = data.codes[enc.name]
            p = np.log1p(np.bincount(codes, minlength=enc.width))
            chosen = rng.choice(enc.width, size=len(picked), p=p / p.sum())
            assert (categories[picked, 0] == chosen).all()
            want_rows[picked] = [rng.choice(np.flatnonzero(codes == c)) for c in chosen]
        assert (columns[:, 0] == want_columns).all() and (rows == want_rows).all()
        assert int(cond.sum()) == 200


def _held(task, name, client):
    """The categories of column ``name`` that ``client`` holds, as indices."""
    return set(np.unique(client.codes[name]).tolist())


def test_own_frequencies_draw_a_clients_categories_and_restore_the_merged_ones(fair):
    # Prepare: CTGAN conditioned on the silo column, whose values the two clients split.
    task = _task(CtganTask, fair, condition_on="occupation")
    names = [enc.name for enc, _ in task.encoder.categorical()]
    offset = task._cond_offsets()[names.index("occupation")]
    width = task.encoder.encoding("occupation").width
    client = fair.clients[0]
    held = _held(task, "occupation", client)
    assert held and len(held) < width  # a silo holds some occupations, not all

    def named(cond):
        return set(cond[:, offset : offset + width].argmax(dim=1).tolist())

    # Execute: generation's conditions inside and after the client's frequencies.
    with task.own_frequencies(client.codes):
        inside = task.generation_conditions(3000, torch.Generator().manual_seed(0), None)
    after = task.generation_conditions(3000, torch.Generator().manual_seed(0), None)
    # Assert: inside, only the client's occupations, in its proportions; after, all.
    assert named(inside) == held
    counts = np.bincount(client.codes["occupation"], minlength=width)
    top = int(counts.argmax())
    share = counts[top] / counts.sum()
    drawn = inside[:, offset + top].mean().item()
    assert abs(drawn - share) < 4 * (share * (1 - share) / 3000) ** 0.5
    assert named(after) == set(range(width)) and task.generation_counts is None


def test_own_frequencies_draw_a_conditional_tvaes_joint_cells_from_the_clients_rows(fair):
    # Prepare: a TVAE conditioned on (silo, target) jointly.
    task = _task(TvaeTask, fair, condition_on=["occupation", "had_affair"])
    client = fair.clients[1]
    pooled = task.condition
    cells = set(
        zip(client.codes["occupation"].tolist(), client.codes["had_affair"].tolist(), strict=True)
    )
    # Execute: rows generated inside the block.
    with task.own_frequencies(client.codes):
        rows = task.sample_rows(500, torch.Generator().manual_seed(0))
    # Assert: every row is a cell the client holds; the pooled block is back after.
    occupation = task.encoder.encoding("occupation")
    affair = task.encoder.encoding("had_affair")
    drawn = {
        (occupation.index(o), affair.index(a))
        for o, a in zip(rows["occupation"], rows["had_affair"], strict=True)
    }
    assert drawn <= cells and task.condition is pooled
    with pytest.raises(ValueError, match="no rows to draw"):
        pooled.with_shares_of({"occupation": np.zeros(0, int), "had_affair": np.zeros(0, int)})
