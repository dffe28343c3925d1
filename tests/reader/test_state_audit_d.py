"""Reader states record the plan rules they were made under (audit D): a state of an earlier larder, whose plan cut
windows and slices otherwise, is refused instead of resuming with other batches; equivalent settings (``sample=1.0``
and ``sample=None``) accept each other's states."""

from __future__ import annotations

import hashlib
import json

import pytest

import loader
from loader import plan
from loader.state import PLAN_RULES, STATE_FORMAT

KW = dict(batch_size=40, seed=3, num_epochs=2, columns=["id"])


def ids(batches) -> list[list[int]]:
    return [b["id"].tolist() for b in batches]


def state_after(url, n: int, **kwargs) -> dict:
    with loader.make_reader(url, **{**KW, **kwargs}) as r:
        for _ in range(n):
            next(r)
        return json.loads(json.dumps(r.state_dict()))


def as_format_1(state: dict) -> dict:
    """The state as larders before plan rules were recorded wrote it (the same keys, format 1, no 'plan')."""
    old = {k: v for k, v in state.items() if k != "plan"}
    return {**old, "format": 1}


def test_a_state_of_this_larder_records_its_plan_rules_and_resumes(mixed_cache):
    with loader.make_reader(mixed_cache, **KW) as r:
        whole = ids(r)
    state = state_after(mixed_cache, 7)
    assert (state["format"], state["plan"]) == (STATE_FORMAT, PLAN_RULES)
    with loader.make_reader(mixed_cache, **KW) as r:
        r.load_state_dict(state)
        assert whole[:7] + ids(r) == whole


def test_a_state_of_an_earlier_larder_is_refused_saying_why_and_what_to_do(mixed_cache):
    """Its windows may have been cut otherwise (before b1af7ff 11 row groups were windows of 10 + 1, now 6 + 5):
    resuming it would repeat some rows of its epoch and skip others. The reader is left as it was, and the
    remedy the message names (set_epoch of the state's epoch) restarts that epoch."""
    state = as_format_1(state_after(mixed_cache, 30))  # epoch 1 (25 batches an epoch), batch 5
    with loader.make_reader(mixed_cache, **KW) as r:
        whole = ids(r)
    with loader.make_reader(mixed_cache, **KW) as r:
        with pytest.raises(loader.StateError) as e:
            r.load_state_dict(state)
        said = str(e.value)
        assert "'format' is 1" in said and "earlier larder" in said
        assert "repeat" in said and "set_epoch(1)" in said
        assert r.epoch == 0 and next(r)["id"].tolist() == whole[0]  # not moved
        r.set_epoch(state["epoch"])
        assert ids(r) == whole[25:]  # epoch 1 from its first batch


def test_a_state_of_other_plan_rules_is_refused(mixed_cache):
    state = state_after(mixed_cache, 3)
    for rules in (PLAN_RULES + 1, PLAN_RULES - 1, None):
        with loader.make_reader(mixed_cache, **KW) as r:
            with pytest.raises(loader.StateError, match=rf"plan rules {rules!r}.*this larder plans with rules "
                                                         rf"{PLAN_RULES}.*set_epoch\(0\)"):
                r.load_state_dict({**state, "plan": rules})
    with pytest.raises(loader.StateError, match="'format' is 7"):
        loader.make_reader(mixed_cache, **KW).load_state_dict({**state, "format": 7})


def test_a_mix_refuses_a_source_state_of_an_earlier_larder(mixed_cache, uneven_cache):
    def make():
        return loader.mix([loader.make_reader(mixed_cache, **KW), loader.make_reader(uneven_cache, **KW)],
                          seed=1)

    with make() as m:
        next(m)
        state = json.loads(json.dumps(m.state_dict()))
    state["sources"][1] = as_format_1(state["sources"][1])
    with make() as m, pytest.raises(loader.StateError, match=r"sources\[1\].*'format' is 1.*earlier larder"):
        m.load_state_dict(state)


@pytest.mark.parametrize("saved, resumed", [(None, 1.0), (1.0, None), (1, None)])
def test_sample_one_and_none_accept_each_others_states(mixed_cache, saved, resumed):
    """Both keep every row in the same order: the same batches, so either resumes the other's state."""
    with loader.make_reader(mixed_cache, sample=saved, **KW) as r:
        whole = ids(r)
    with loader.make_reader(mixed_cache, sample=resumed, **KW) as r:
        assert ids(r) == whole
    state = state_after(mixed_cache, 9, sample=saved)
    with loader.make_reader(mixed_cache, sample=resumed, **KW) as r:
        r.load_state_dict(state)
        assert whole[:9] + ids(r) == whole
    with pytest.raises(loader.StateError, match="config.sample"):  # a real subset is another plan
        loader.make_reader(mixed_cache, sample=0.5, **KW).load_state_dict(state)


# Plans of a few settings (shuffled or not, sliced, sampled, sharded, drop_last) under the current rules. A change
# of loader.plan (or of the window permutation) that gives other batches for the same settings must bump
# loader.state.PLAN_RULES, so that states made under the old rules are refused; then update this digest.
PLAN_DIGEST = "49038be68f23c866f5df61fc7f750ad4df009ff5a0f83fd9ef9e6b510d09973d"
SIZES = [97, 1, 40, 13, 64, 5, 33, 22, 8, 61, 11, 50]
SETTINGS = [
    dict(batch_size=16, window=4),
    dict(batch_size=16, window=3, max_piece_rows=16),
    dict(batch_size=16, window=10, max_piece_rows=7),
    dict(batch_size=20, window=4, max_piece_rows=16, shuffle=False),
    dict(batch_size=12, window=5, sample=0.4, drop_last=True),
    dict(batch_size=9, window=4, max_piece_rows=20, rank=1, world_size=3),
]


def plan_digest() -> str:
    out = []
    for settings in SETTINGS:
        for epoch in (0, 1):
            p = plan.plan_epoch(SIZES, seed=5, epoch=epoch, **settings)
            for w in p.windows:
                perm = plan.window_permutation(w.rows, 5, epoch, p.rank, p.world_size, w.index,
                                               settings.get("shuffle", True))
                out.append([[list(x) for x in w.pieces], w.first_row, None if perm is None else perm.tolist()])
            out.append([list(p.batch_bounds), p.kept])
            if p.kept is not None:
                out.append([plan.sample_rows(s, k, 5, epoch, g).tolist()
                            for g, (s, k) in enumerate(zip(SIZES, p.kept, strict=True))])
    return hashlib.sha256(json.dumps(out).encode()).hexdigest()


def test_the_plan_rules_are_those_states_record():
    assert plan_digest() == PLAN_DIGEST, (
        "loader.plan plans these settings otherwise than when PLAN_RULES was last set: bump "
        "loader.state.PLAN_RULES (states of the old rules would resume with other batches) and update PLAN_DIGEST")
