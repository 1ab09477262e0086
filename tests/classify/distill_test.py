"""Context distillation: KL against numpy; a k = 0 teacher equal to the student has zero loss at
initialisation (exactly), and with demonstrations the student moves toward the teacher."""

import numpy as np
import pytest

from ft_scaling.classify import distill, encoding, patterns, run, tasks, train
from ft_scaling.train import partitioning

EXAMPLES = [
    tasks.Example(("Open file", "Datei öffnen"), 1),
    tasks.Example(("Save as...", "Drucken"), 0),
    tasks.Example(("Quit", "Beenden"), 1),
    tasks.Example(("Print", "Verbindung abgebrochen"), 0),
]


def test_kl_divergence_matches_numpy():
    rng = np.random.default_rng(0)
    teacher = np.log(rng.dirichlet(np.ones(3), size=5))
    student = np.log(rng.dirichlet(np.ones(3), size=5))
    expected = np.mean(np.sum(np.exp(teacher) * (teacher - student), axis=-1))
    per_example = distill.kl_divergence(teacher, student)
    assert float(np.mean(per_example)) == pytest.approx(expected, rel=1e-5)
    assert np.all(np.asarray(distill.kl_divergence(teacher, teacher)) == 0.0)


def _distill(kit, shots, tuning, steps):
    settings = run.RunSettings(model_config=kit.TINY, sequence_length=48, icl_sequence_length=160)
    spec = run.MethodSpec("distill", "distill", tuning, steps=steps, shots=shots)
    mesh, rules = partitioning.make_mesh(), partitioning.logical_rules()
    model = run.build_model(spec, settings, 2, None, 0, mesh, rules)
    pattern = patterns.get_pattern(settings.pattern, "translation_match")
    verbalizers = kit.encoder.verbalizer_ids(pattern)
    demos = EXAMPLES[:shots]
    labels = [-1] * len(EXAMPLES)  # unlabeled inputs
    teacher_rows = [kit.encoder.prompt(pattern, e, demos) for e in EXAMPLES]
    teacher_arrays = encoding.candidate_arrays(teacher_rows, verbalizers, labels, 160)
    teacher = train.predict(
        model.eval_fn, model.state.params, model.frozen, teacher_arrays, 4, mesh, rules
    )
    student_rows = [kit.encoder.prompt(pattern, e) for e in EXAMPLES]
    arrays = encoding.candidate_arrays(student_rows, verbalizers, labels, 48)
    arrays["teacher_log_probs"] = teacher
    _, losses = train.fit(
        model.train_fn,
        model.state,
        model.frozen,
        arrays,
        steps,
        4,
        lambda step: 3e-2,
        0,
        mesh,
        rules,
    )
    return losses


def test_zero_shot_teacher_equal_to_student_has_zero_loss_at_init(kit):
    # Exactly 0, not approximately: same params, same rows, same scoring function. (Later
    # steps need not stay at 0: Adam rescales even round-off-sized gradients to full steps.)
    losses = _distill(kit, shots=0, tuning="lora", steps=1)
    assert losses[0] == 0.0


def test_student_learns_the_teacher_with_demonstrations(kit):
    losses = _distill(kit, shots=2, tuning="lora", steps=15)
    assert losses[0] > 1e-6
    assert losses[-1] < 0.5 * losses[0]
