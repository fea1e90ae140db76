"""PIP-Net's training plan: which groups train, with which loss weights, per epoch.

SPEC §3: pretraining (λ_A = e/E, λ_T = 5, classifier frozen) → phase 2 with the first
`finetune_epochs` training only the scoring sheet (2·L_C), then up to `freeze_epochs`
with the backbone group frozen, then everything (5·L_A + 2·L_T + 2·L_C).

`freeze_epochs` counts from the start of phase 2 and includes the finetune epochs:

    finetune = min(finetune_epochs, epochs)   (0 without pretraining)
    frozen   = max(0, min(freeze_epochs, epochs) - finetune)
    full     = epochs - finetune - frozen

so `epochs=3, freeze_epochs=1, finetune_epochs=1` has no frozen stage.
"""
from __future__ import annotations

import dataclasses

PRETRAIN, FINETUNE, FROZEN, FULL = "pretrain", "finetune", "frozen", "full"
NET_GROUPS = ("backbone", "freeze", "train", "add_on")


@dataclasses.dataclass(frozen=True)
class Stage:
    """A run of consecutive epochs with one set of trainable groups.

    Attributes:
        name: one of "pretrain", "finetune", "frozen", "full".
        phase: 1 (prototype pretraining) or 2 (classification); each phase has its own
            optimisers and schedules.
        first_epoch: global 0-based index of the stage's first epoch.
        epochs: number of epochs in the stage.
        trainable_groups: layer groups trained (see `PIPNet.layer_groups`).
        loss_weights: (λ_A, λ_T, λ_C); λ_A is None in pretraining, where it ramps
            as epoch/epochs_pretrain (1-based epoch).
    """

    name: str
    phase: int
    first_epoch: int
    epochs: int
    trainable_groups: tuple[str, ...]
    loss_weights: tuple[float | None, float, float]

    @property
    def end_epoch(self) -> int:
        return self.first_epoch + self.epochs


def make_plan(
    epochs_pretrain: int, epochs: int, freeze_epochs: int, finetune_epochs: int = 3,
    loaded: bool = False, freeze_backbone_group: bool = True,
) -> list[Stage]:
    """The list of non-empty stages, in order, with global epoch indices.

    Finetune epochs exist only after pretraining or when the model was `loaded` from a
    checkpoint (reference: `epochs_to_finetune` applies only if there was pretraining or
    a loaded checkpoint, `--state_dict_dir_net`).

    `freeze_backbone_group=False` also trains the backbone group (a backbone's first
    stages) in pretraining and the frozen stage: the reference keeps it frozen there because
    it holds ImageNet weights; a backbone trained from scratch would keep random first
    stages (and their BatchNorm's initial statistics) until the full stage.
    """
    for name, value in (("epochs_pretrain", epochs_pretrain), ("epochs", epochs),
                        ("freeze_epochs", freeze_epochs), ("finetune_epochs", finetune_epochs)):
        if value < 0:
            raise ValueError(f"`{name}` must be >= 0, received: {value}")
    finetune = min(finetune_epochs, epochs) if epochs_pretrain > 0 or loaded else 0
    frozen = max(0, min(freeze_epochs, epochs) - finetune)
    full = epochs - finetune - frozen
    net = tuple(g for g in NET_GROUPS if g != "backbone" or not freeze_backbone_group)
    specs = [
        (PRETRAIN, 1, epochs_pretrain, net, (None, 5.0, 0.0)),
        (FINETUNE, 2, finetune, ("classifier",), (0.0, 0.0, 2.0)),
        (FROZEN, 2, frozen, net + ("classifier",), (5.0, 2.0, 2.0)),
        (FULL, 2, full, NET_GROUPS + ("classifier",), (5.0, 2.0, 2.0)),
    ]
    plan, start = [], 0
    for name, phase, count, groups, weights in specs:
        if count:
            plan.append(Stage(name, phase, start, count, groups, weights))
            start += count
    return plan


def stage_at(plan: list[Stage], epoch: int) -> Stage:
    """The stage containing global 0-based `epoch`."""
    for stage in plan:
        if stage.first_epoch <= epoch < stage.end_epoch:
            return stage
    raise ValueError(f"Epoch {epoch} is outside the plan of {plan[-1].end_epoch if plan else 0} epochs.")


def loss_weights_for_epoch(stage: Stage, epoch: int) -> tuple[float, float, float]:
    """(λ_A, λ_T, λ_C) for global 0-based `epoch` in `stage` (pretraining ramps λ_A)."""
    align, tanh, cls = stage.loss_weights
    if align is None:
        align = _epoch_in_stage(stage, epoch) / stage.epochs
    return (align, tanh, cls)


def _epoch_in_stage(stage: Stage, epoch: int) -> int:
    """Global 0-based `epoch` counted from 1 within `stage` (the pretraining ramps' e)."""
    return epoch - stage.first_epoch + 1


BACKGROUND_PRETRAIN_MODES = ("ramp", "ramp:N", "off", "full")


def background_scale_for_epoch(stage: Stage, epoch: int, pretraining: str = "ramp") -> float:
    """The factor on λ_B (the background loss) for global 0-based `epoch`; 1 in phase 2.
    In pretraining, `pretraining` (`--background_loss_pretrain`) says: "ramp" with λ_A
    (epoch/epochs_pretrain, 1-based), since at the start, with λ_A small, the background
    loss alone drives the patch softmax towards uniform (every prototype absent
    everywhere), from which pretraining can take epochs to recover; "ramp:N" linearly
    over the first N pretraining epochs (epoch/N), then 1; "off" (0: the term starts with
    phase 2, once the scoring sheet says which prototypes matter); "full" (1)."""
    ramp_epochs = background_ramp_epochs(pretraining) or stage.epochs  # "ramp": with λ_A
    if stage.loss_weights[0] is not None or pretraining == "full":
        return 1.0
    if pretraining == "off":
        return 0.0
    return min(1.0, _epoch_in_stage(stage, epoch) / ramp_epochs)


def background_ramp_epochs(mode: str) -> int:
    """N of a "ramp:N" mode of `--background_loss_pretrain` (0 for the other modes).
    Raises ValueError naming the flag for a mode not in BACKGROUND_PRETRAIN_MODES."""
    name, separator, count = mode.partition(":")
    if not separator and mode in BACKGROUND_PRETRAIN_MODES:
        return 0
    if name == "ramp" and count.isdigit() and int(count) > 0:
        return int(count)
    raise ValueError(f"Unknown --background_loss_pretrain={mode!r}; use "
                     f"{' | '.join(BACKGROUND_PRETRAIN_MODES)} (N >= 1 epochs).")


def check_background_pretrain_mode(mode: str) -> None:
    """Raises ValueError naming the flag for a mode not in BACKGROUND_PRETRAIN_MODES."""
    background_ramp_epochs(mode)


def extra_shrink_epochs(plan: list[Stage], every: int = 30) -> set[int]:
    """Global epochs at whose start the reference shrinks W once more: phase-2 epochs
    (1-based) that are multiples of `every`, and the last one (only if > 1 epoch)."""
    phase2 = [s for s in plan if s.phase == 2]
    if not phase2:
        return set()
    first = phase2[0].first_epoch
    total = phase2[-1].end_epoch - first
    if total <= 1:
        return set()
    local = {e for e in range(1, total + 1) if e % every == 0 or e == total}
    return {first + e - 1 for e in local}


def classifier_only_plan(epochs: int) -> list[Stage]:
    """`epochs` phase-2 epochs that train only the scoring sheet with 2·L_C, the settings
    of the finetune stage: retraining the scoring sheet after a hand edit (`trainers.edit`)."""
    if int(epochs) < 1:
        raise ValueError(f"`epochs` must be >= 1, received: {epochs}")
    return [Stage(FINETUNE, 2, 0, int(epochs), ("classifier",), (0.0, 0.0, 2.0))]


STAGE_TEXT = {
    PRETRAIN: "prototype pretraining, λ_A ramps to 1, λ_T = 5, no classifier",
    FINETUNE: "the classifier only, 2·L_C",
    FROZEN: "the backbone group frozen unless listed, 5·L_A + 2·L_T + 2·L_C",
    FULL: "everything, 5·L_A + 2·L_T + 2·L_C",
}


def check_classification_epochs(epochs: int) -> None:
    """Refuses a run without phase-2 epochs: its scoring sheet would never be trained,
    yet it would be saved, evaluated and exported like a classifier.

    Raises:
        ValueError: `epochs` < 1.
    """
    if epochs < 1:
        raise ValueError(
            f"--epochs={epochs}: the scoring sheet is trained only in the classification "
            "phase, so this run would save and evaluate an untrained classifier. Pass "
            "--epochs >= 1 (the pretraining epochs are --epochs_pretrain).")


def describe_plan(plan: list[Stage]) -> list[str]:
    """One line per stage: 1-based epochs, stage, phase, what trains, the loss."""
    total = plan[-1].end_epoch if plan else 0
    lines = [f"Training plan: {total} epochs"]
    for s in plan:
        lines.append(f"  epochs {s.first_epoch + 1:>3}-{s.end_epoch:<3} {s.name:<8} "
                     f"(phase {s.phase}, {s.epochs} epochs): trains "
                     f"{', '.join(s.trainable_groups)}; {STAGE_TEXT[s.name]}")
    return lines


def plan_warnings(epochs_pretrain: int, epochs: int, freeze_epochs: int,
                  finetune_epochs: int, loaded: bool = False) -> list[str]:
    """Flags that ask for a stage the plan does not have (see `make_plan`)."""
    plan = {s.name: s.epochs for s in make_plan(epochs_pretrain, epochs, freeze_epochs,
                                                 finetune_epochs, loaded=loaded)}
    finetune = plan.get(FINETUNE, 0)
    warnings = []
    if finetune_epochs > 0 and epochs_pretrain == 0 and not loaded:
        warnings.append(f"--finetune_epochs={finetune_epochs} is ignored without pretraining "
                        "(--epochs_pretrain=0) or a loaded checkpoint, as in the reference.")
    if freeze_epochs > 0 and not plan.get(FROZEN, 0) and epochs > finetune:
        warnings.append(
            f"--freeze_epochs={freeze_epochs} counts the {finetune} classifier-only epoch(s) "
            f"of --finetune_epochs, so there is no frozen-backbone stage; for N frozen "
            f"epochs pass --freeze_epochs={finetune}+N.")
    return warnings
