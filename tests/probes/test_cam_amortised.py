"""CAM's faithfulness scores amortised: every ``faithfulness_every``-th run, left out first under a budget, and the
record says whether a run had them; the maps and localisation are the same with or without them."""

from __future__ import annotations

import pickle

import pytest
import torch
from _support import tiny_cnn
from torch import nn

from trainviz.core.contract import Credit, Share
from trainviz.core.probeset import ProbeSet
from trainviz.probes.cam import CAMConfig, CAMHistory, CAMOptions, CAMPlan, CAMProbe, CAMProbeResult

FAITHFUL = ("average_drop", "increase_in_confidence", "deletion_auc")


def _prober(model: nn.Module, n: int = 6, **options) -> CAMProbe:
    g = torch.Generator().manual_seed(1)
    masks = torch.rand(n, 12, 12, generator=g) > 0.6
    probe = ProbeSet(torch.rand(n, 3, 12, 12, generator=g), torch.arange(n) % 3, torch.arange(n), masks=masks)
    config = CAMConfig({"0": model[0], "2": model[2]}, CAMOptions(deletion_steps=2, n_grid=3, **options), batch_size=4)
    return CAMProbe(probe, config, CAMHistory())


def test_faithfulness_every_3_runs_at_the_first_run_and_every_third():
    model = tiny_cnn()
    prober = _prober(model, faithfulness_every=3)
    results = [prober.run(model, Credit(epoch=epoch)) for epoch in range(8)]
    assert [r.faithfulness for r in results] == [e % 3 == 0 for e in range(8)]
    assert prober.history.faithfulness_epochs == [0, 3, 6]
    for result in results:
        record = result.record()
        assert record["faithfulness"] is result.faithfulness
        assert ("aggregate/deletion_auc" in record) is result.faithfulness
        assert all((f"{k}/{m}" in record) is result.faithfulness for k in ("0", "2", "aggregate") for m in FAITHFUL)
        assert "aggregate/pointing_game" in record and CAMProbeResult.from_record(record) == result
        assert ("deletion_curve/aggregate" in result.per_image) is result.faithfulness
    assert "aggregate/drift_correlation" in results[1].record()  # drift needs no faithfulness


def test_the_default_runs_the_faithfulness_scores_at_every_run_without_a_budget():
    model = tiny_cnn()
    prober = _prober(model)
    assert all(prober.run(model, Credit(epoch=e)).faithfulness for e in range(3))
    assert prober.plan(Credit(epoch=3)) == CAMPlan(faithfulness=True, whole=True) and prober.skipped == []
    prober.costs = {"maps": 5.0, "faithfulness": 50.0}  # without a budget the costs do not matter
    assert prober.plan(Credit(None, essential=False, epoch=3)) == CAMPlan()


@pytest.mark.parametrize("every", [0, -1, 1.5, True, "2"])
def test_faithfulness_every_is_a_positive_int(every):
    with pytest.raises(ValueError, match="Expected `faithfulness_every` to be a positive int"):
        CAMOptions(faithfulness_every=every)


def test_under_a_budget_the_faithfulness_scores_go_first():
    model = tiny_cnn()
    prober = _prober(model)
    prober.costs = {"maps": 0.2, "faithfulness": 1.0}  # hand-set: 1.2 s whole, 0.2 s for the maps
    for essential in (False, True):  # the whole run fits
        assert prober.plan(Credit(1.5, essential, 4)) == CAMPlan(faithfulness=True, whole=True)
        assert prober.skipped == []
    plan = prober.plan(Credit(0.5, False, 4))  # only the maps fit
    assert plan == CAMPlan(faithfulness=False, whole=False)
    assert [what for what, _ in prober.skipped] == ["faithfulness"]
    assert prober.skipped[0][1] == "the maps last took 0.20 s and the faithfulness scores 1.00 s, credit 0.50 s"
    assert prober.plan(Credit(0.1, False, 4)) is None  # nothing fits: a run that is not essential waits
    assert prober.skipped == [("run", "its parts last took 1.20 s, credit 0.10 s")]
    plan = prober.plan(Credit(0.1, True, 4))  # an essential run is never skipped: the maps alone
    assert plan == CAMPlan(faithfulness=False, whole=False) and [w for w, _ in prober.skipped] == ["faithfulness"]
    assert prober.plan(Credit(-0.3, True, 4)) == CAMPlan(faithfulness=False, whole=False)


def test_under_a_budget_the_first_run_prices_its_parts_from_a_forward_so_it_fits_too():
    model = tiny_cnn()
    prober = _prober(model)  # 6 images, 2 layers and their aggregate, 2 deletion steps
    assert prober.plan(Credit(0.01, True, 0)) == CAMPlan(faithfulness=True, whole=True)  # no price: it all fits
    prober.image_seconds = lambda: 0.01  # one image's forward: the maps 3 x 6 x 0.01, the scores 3 x 5 x 6 x 0.01
    assert prober.estimates() == pytest.approx({"maps": 0.18, "faithfulness": 0.9})
    assert prober.plan(Credit(1.2, False, 0)) == CAMPlan(faithfulness=True, whole=True)  # 1.08 s fits
    plan = prober.plan(Credit(0.5, True, 0))  # the first run, essential, scaled down to its maps
    assert plan == CAMPlan(faithfulness=False, whole=False)
    assert prober.skipped == [
        (
            "faithfulness",
            "the maps would take about 0.18 s and the faithfulness scores would take about 0.90 s, credit 0.50 s",
        )
    ]
    assert prober.plan(Credit(0.1, False, 0)) is None  # not even the maps
    assert prober.skipped == [("run", "its parts would take about 1.08 s, credit 0.10 s")]
    result = prober.run(model, Credit(0.5, False, 0))
    assert result is not None and not result.faithfulness and list(prober.costs) == ["maps"]
    assert list(prober.estimates()) == ["faithfulness"]  # measured parts are not estimated
    prober.costs["maps"] = 0.3
    assert prober.plan(Credit(1.0, False, 1)) == CAMPlan(faithfulness=False, whole=False)
    assert prober.skipped[0][1] == (
        "the maps last took 0.30 s and the faithfulness scores would take about 0.90 s, credit 1.00 s"
    )
    assert prober.plan(Credit(None, False, 1)) == CAMPlan()  # without a budget the estimates do not matter


def test_under_a_budget_a_run_without_due_scores_costs_the_maps():
    model = tiny_cnn()
    prober = _prober(model, faithfulness_every=2)
    prober.run(model, Credit(epoch=0))  # measured: both parts
    assert set(prober.costs) == {"maps", "faithfulness"} and all(v > 0 for v in prober.costs.values())
    prober.costs = {"maps": 0.2, "faithfulness": 1.0}
    assert prober.plan(Credit(0.3, False, 1)) == CAMPlan(faithfulness=False, whole=True)  # not due: the maps fit
    assert prober.skipped == []
    assert prober.plan(Credit(0.1, False, 1)) is None
    assert prober.plan(Credit(0.1, True, 1)) == CAMPlan(faithfulness=False, whole=True) and prober.skipped == []
    result = prober.run(model, Credit(0.3, False, 1))
    assert result is not None and not result.faithfulness
    assert prober.costs["faithfulness"] == 1.0 and prober.costs["maps"] != 0.2  # the maps measured again
    # scores left out by the budget come at the next run
    prober.costs = {"maps": 0.2, "faithfulness": 1.0}
    assert prober.plan(Credit(0.5, False, 2)) == CAMPlan(faithfulness=False, whole=False)
    assert prober.run(model, Credit(0.5, False, 2)).faithfulness is False
    assert prober.plan(Credit(None, False, 3)) == CAMPlan(faithfulness=True)  # due since epoch 2's was left out


def test_the_maps_and_localisation_do_not_depend_on_the_faithfulness_scores():
    model = tiny_cnn()
    prober = _prober(model)
    share = Share.of(prober.probe)
    full, bare = CAMPlan(), CAMPlan(faithfulness=False, whole=False)
    with_scores, without = prober.compute(model, share, full, None), prober.compute(model, share, bare, None)
    for name in ("maps", "small"):
        a, b = getattr(with_scores, name), getattr(without, name)
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a), name
    assert torch.equal(with_scores.probs, without.probs) and torch.equal(with_scores.targets, without.targets)
    local = {k for k in with_scores.per_image if k.split("/")[0] in ("pointing_hit", "energy")}
    assert set(without.per_image) == local and len(local) == 6  # two arrays for each of three map keys
    assert all(torch.equal(with_scores.per_image[k], without.per_image[k]) for k in local)
    assert not any(k.startswith(("drop/", "increase/", "deletion_")) for k in without.per_image)
    assert set(with_scores.seconds) == {"maps", "faithfulness"} and set(without.seconds) == {"maps"}
    assert pickle.loads(pickle.dumps(bare)) == bare  # plain data, broadcast from rank 0
    assert pickle.loads(pickle.dumps(without)).per_image.keys() == without.per_image.keys()

    a = prober.merge([with_scores], full).record()
    b = prober.merge([without], bare).record()
    assert a["faithfulness"] is True and b["faithfulness"] is False
    assert {k: v for k, v in a.items() if k.rsplit("/", 1)[-1] not in FAITHFUL and k != "faithfulness"} == {
        k: v for k, v in b.items() if k != "faithfulness" and "drift" not in k
    }  # the second merge has drift (against the first), the same maps: 1
    assert not any(k.endswith("/deletion_auc") for k in b)
    assert b["aggregate/drift_correlation"] == pytest.approx(1.0)


def test_a_run_without_the_scores_keeps_their_curves_in_the_section():
    model = tiny_cnn()
    prober = _prober(model, faithfulness_every=2)
    first, second = (prober.run(model, Credit(epoch=e)) for e in (0, 1))
    assert not second.faithfulness and "deletion_auc" not in second.per_map["aggregate"]
    curves = {c["title"]: c for c in second.section()["curves"]}
    assert {c["title"] for c in first.section()["curves"]} <= curves.keys()  # and the drift, from the second run
    assert {"name": "aggregate", "key": ["aggregate/deletion_auc"]} in curves["Deletion AUC"]["series"]


def test_the_history_keeps_the_faithfulness_runs_in_its_state():
    history = CAMHistory(runs=[(e, torch.zeros(2, 4, 4, dtype=torch.float16)) for e in range(3)])
    history.faithfulness_epochs = [0, 2]
    restored = CAMHistory()
    restored.load_state_dict(history.state_dict())
    assert restored.faithfulness_epochs == [0, 2] and [e for e, _ in restored.runs] == [0, 1, 2]
    older = {k: v for k, v in history.state_dict().items() if k != "faithfulness_epochs"}
    restored.load_state_dict(older)  # a state from before amortisation: every run had the scores
    assert restored.faithfulness_epochs == [0, 1, 2]
    restored.clear()
    assert restored.faithfulness_epochs == [] and restored.faithfulness_due(5)
