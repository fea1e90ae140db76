import pytest

from pipnet_tf import phases


def test_reference_plan_epochs_and_groups():
    plan = phases.make_plan(epochs_pretrain=10, epochs=60, freeze_epochs=10)
    assert [(s.name, s.first_epoch, s.epochs) for s in plan] == [
        ("pretrain", 0, 10), ("finetune", 10, 3), ("frozen", 13, 7), ("full", 20, 50)]
    groups = {s.name: set(s.trainable_groups) for s in plan}
    assert groups["pretrain"] == {"freeze", "train", "add_on"}
    assert groups["finetune"] == {"classifier"}
    assert groups["frozen"] == {"freeze", "train", "add_on", "classifier"}
    assert groups["full"] == {"backbone", "freeze", "train", "add_on", "classifier"}
    assert [s.phase for s in plan] == [1, 2, 2, 2]


def test_unfrozen_backbone_group_trains_in_every_network_stage():
    """--nofreeze_backbone_group (backbones trained from scratch): the backbone group
    trains in pretraining and the frozen stage too; stages, epochs and losses unchanged."""
    reference = phases.make_plan(10, 60, 10)
    plan = phases.make_plan(10, 60, 10, freeze_backbone_group=False)
    assert [(s.name, s.first_epoch, s.epochs, s.loss_weights) for s in plan] == [
        (s.name, s.first_epoch, s.epochs, s.loss_weights) for s in reference]
    groups = {s.name: s.trainable_groups for s in plan}
    assert set(groups["pretrain"]) == {"backbone", "freeze", "train", "add_on"}
    assert groups["finetune"] == ("classifier",)
    assert set(groups["frozen"]) == set(groups["full"]) == {
        "backbone", "freeze", "train", "add_on", "classifier"}
    assert len(groups["full"]) == 5


def test_loss_weights_per_stage():
    plan = phases.make_plan(10, 60, 10)
    pre = plan[0]
    ramp = [phases.loss_weights_for_epoch(pre, e)[0] for e in range(10)]
    assert ramp == pytest.approx([0.1 * k for k in range(1, 11)])
    assert phases.loss_weights_for_epoch(pre, 3)[1:] == (5.0, 0.0)
    assert phases.loss_weights_for_epoch(plan[1], 11) == (0.0, 0.0, 2.0)
    assert phases.loss_weights_for_epoch(plan[2], 15) == (5.0, 2.0, 2.0)
    assert phases.loss_weights_for_epoch(plan[3], 69) == (5.0, 2.0, 2.0)


def test_background_loss_scale_in_pretraining_per_mode():
    plan = phases.make_plan(4, 6, 1)  # pretrain 0-3, finetune 4-5
    pre, finetune = plan[0], plan[1]
    scales = {mode: [phases.background_scale_for_epoch(pre, e, mode) for e in range(4)]
              for mode in ("ramp", "ramp:2", "off", "full")}
    assert scales["ramp"] == pytest.approx([0.25, 0.5, 0.75, 1.0])  # λ_A's ramp
    assert scales["ramp:2"] == pytest.approx([0.5, 1.0, 1.0, 1.0])
    assert scales["off"] == [0.0] * 4
    assert scales["full"] == [1.0] * 4
    for mode in scales:  # phase 2: λ_B as given
        assert phases.background_scale_for_epoch(finetune, 4, mode) == 1.0
    for bad in ("later", "ramp:0", "ramp:N", "ramp:x", "off:2"):
        with pytest.raises(ValueError, match=r"--background_loss_pretrain=.*ramp \| ramp:N"):
            phases.background_scale_for_epoch(pre, 0, bad)


def test_no_finetune_without_pretraining():
    plan = phases.make_plan(0, 5, 2)
    assert [(s.name, s.epochs) for s in plan] == [("frozen", 2), ("full", 3)]


def test_a_loaded_checkpoint_gets_finetune_epochs_without_pretraining():
    """Reference: finetune epochs follow pretraining *or* a loaded checkpoint
    (--state_dict_dir_net with --epochs_pretrain=0)."""
    plan = phases.make_plan(0, 5, 2, finetune_epochs=3, loaded=True)
    assert [(s.name, s.first_epoch, s.epochs) for s in plan] == [
        (phases.FINETUNE, 0, 3), (phases.FULL, 3, 2)]
    assert phases.make_plan(0, 0, 10, loaded=True) == []


def test_stage_lookup_and_extra_shrink_epochs():
    plan = phases.make_plan(10, 60, 10)
    assert phases.stage_at(plan, 0).name == "pretrain"
    assert phases.stage_at(plan, 12).name == "finetune"
    assert phases.stage_at(plan, 69).name == "full"
    with pytest.raises(ValueError, match="outside the plan"):
        phases.stage_at(plan, 70)
    # Phase-2 epochs 30 and 60 (1-based) → global 0-based 10 + 29 and 10 + 59.
    assert phases.extra_shrink_epochs(plan) == {39, 69}
    assert phases.extra_shrink_epochs(phases.make_plan(2, 1, 0)) == set()


def test_bad_epochs_raise():
    with pytest.raises(ValueError, match="epochs_pretrain"):
        phases.make_plan(-1, 5, 2)


def test_freeze_epochs_include_the_finetune_epochs_and_the_plan_says_so():
    plan = phases.make_plan(epochs_pretrain=2, epochs=3, freeze_epochs=1, finetune_epochs=1)
    assert [(s.name, s.epochs) for s in plan] == [("pretrain", 2), ("finetune", 1), ("full", 2)]
    lines = phases.describe_plan(plan)
    assert lines[0] == "Training plan: 5 epochs"
    assert lines[1].split()[:3] == ["epochs", "1-2", "pretrain"]
    assert "trains classifier;" in lines[2] and lines[2].split()[1] == "3-3"
    assert "trains backbone, freeze, train, add_on, classifier" in lines[3]
    (warning,) = phases.plan_warnings(2, 3, 1, 1)
    assert "no frozen-backbone stage" in warning and "--freeze_epochs=1+N" in warning
    assert phases.plan_warnings(10, 60, 10, 3) == []  # the reference plan: 7 frozen epochs
    assert "ignored without pretraining" in phases.plan_warnings(0, 5, 2, 3)[0]


def test_a_run_without_classification_epochs_is_refused():
    with pytest.raises(ValueError, match="--epochs=0: the scoring sheet"):
        phases.check_classification_epochs(0)
    phases.check_classification_epochs(1)
