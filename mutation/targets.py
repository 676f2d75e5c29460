"""What ``make mutation`` mutates, with which operators, and which tests judge each file.

The one place to edit when files move: ``TARGETS`` maps each mutated file to the tests run
against its mutants, fastest and most discriminating first (pytest stops at the first failure,
so a killed mutant usually costs one interpreter start and a few seconds).
"""

from __future__ import annotations

REFERENCE_TESTS = [
    "tests/test_shared_contracts.py",
    "tests/test_reference_eval_data.py",
    "tests/test_reference_training.py",
]

# The steps (train.py), the Trainer (trainer.py) and its data-parallel machinery
# (data_parallel.py) of each backend are judged by the same tests.
JAX_TRAINING_TESTS = [
    "tests/test_reference_training.py",
    "tests/test_jax_donation.py",
    "tests/test_train_jax_torch.py",
    "tests/test_reference_eval_data.py",
    "tests/test_trainer_contracts.py",
    # compile="cudagraph": accepted on CUDA only (on_cuda), one refusal text in both.
    "tests/test_cuda_graph.py",
    "tests/test_data_parallel.py",
]
TORCH_TRAINING_TESTS = [
    "tests/test_reference_training.py",
    "tests/test_shared_contracts.py",
    "tests/test_train_jax_torch.py",
    "tests/test_reference_eval_data.py",
    "tests/test_trainer_contracts.py",
    # The CUDA-graph step through the stand-in graph API, and its refusals (seconds).
    "tests/test_cuda_graph.py",
    # matmul_precision's process-wide TF32 switches (a minute: bf16 and compiled steps too).
    "tests/test_precision.py",
    "tests/test_data_parallel.py",
]

TARGETS: dict[str, list[str]] = {
    "vae_common/training.py": [
        "tests/test_common_contracts.py",
        *REFERENCE_TESTS,
        "tests/test_config.py",
        "tests/test_train_jax_torch.py",
    ],
    "vae_common/evaluation.py": [
        "tests/test_common_contracts.py",
        "tests/test_shared_contracts.py",
        "tests/test_reference_eval_data.py",
        "tests/test_train_jax_torch.py",
    ],
    "vae_common/batches.py": [
        "tests/test_common_contracts.py",
        "tests/test_data_contracts.py",
        "tests/test_shared_contracts.py",
        "tests/test_reference_eval_data.py",
        "tests/test_data.py",
        "tests/test_reference_training.py",
        "tests/test_own_data.py",
    ],
    "vae_common/sources.py": [
        "tests/test_data_contracts.py",
        "tests/test_data.py",
        "tests/test_own_data.py",
        "tests/test_shared_contracts.py",
        "tests/test_reference_eval_data.py",
        "tests/test_reference_training.py",
    ],
    "vae_common/layout.py": [
        "tests/test_common_contracts.py",
        "tests/test_data_contracts.py",
        "tests/test_idx_npz_contracts.py",
        "tests/test_data.py",
        "tests/test_own_data.py",
        "tests/test_shared_contracts.py",
        "tests/test_reference_eval_data.py",
        "tests/test_reference_training.py",
    ],
    "vae_common/datasets.py": [
        "tests/test_data_contracts.py",
        "tests/test_idx_npz_contracts.py",
        "tests/test_data.py",
        "tests/test_own_data.py",
        "tests/test_shared_contracts.py",
        "tests/test_reference_eval_data.py",
        "tests/test_reference_training.py",
    ],
    "vae_common/idx.py": [
        "tests/test_data_contracts.py",
        "tests/test_idx_npz_contracts.py",
        "tests/test_data.py",
        "tests/test_own_data.py",
        "tests/test_shared_contracts.py",
        "tests/test_reference_eval_data.py",
        "tests/test_reference_training.py",
    ],
    "vae_common/npz.py": [
        "tests/test_data_contracts.py",
        "tests/test_idx_npz_contracts.py",
        "tests/test_data.py",
        "tests/test_own_data.py",
        "tests/test_shared_contracts.py",
        "tests/test_reference_eval_data.py",
        "tests/test_reference_training.py",
    ],
    "vae_common/data.py": [
        "tests/test_data_contracts.py",
        "tests/test_data.py",
        "tests/test_own_data.py",
        "tests/test_shared_contracts.py",
        "tests/test_reference_eval_data.py",
        "tests/test_reference_training.py",
    ],
    "vae_common/reference.py": [
        "tests/test_shared_contracts.py",
        "tests/test_reference_training.py",
        "tests/test_losses.py",
        "tests/test_reference_eval_data.py",
    ],
    "vae_common/trainer.py": [
        *REFERENCE_TESTS,
        "tests/test_trainer_contracts.py",
        "tests/test_train_jax_torch.py",
        "tests/test_api_mirror.py",
        # Slow (subprocesses, minutes): last, so only survivors of everything above pay for it.
        "tests/test_data_parallel.py",
    ],
    "vae_common/trainer_inference.py": [
        *REFERENCE_TESTS,
        "tests/test_train_jax_torch.py",
        "tests/test_api_mirror.py",
    ],
    "vae_common/streaming.py": [
        "tests/test_streaming.py",
        "tests/test_train_jax_torch.py",
        "tests/test_data_parallel.py",
    ],
    "vae_common/trainer_checks.py": [
        *REFERENCE_TESTS,
        "tests/test_trainer_contracts.py",
        # check_compile's modes and refusals, in both trainers (seconds).
        "tests/test_cuda_graph.py",
        "tests/test_train_jax_torch.py",
        "tests/test_data_parallel.py",
    ],
    "vae_jax/losses.py": [
        "tests/test_losses.py",
        *REFERENCE_TESTS,
        "tests/test_input_checks.py",
    ],
    "vae_jax/input_checks.py": [
        "tests/test_input_checks.py",
        "tests/test_loss_setting_contracts.py",
        "tests/test_losses.py",
        *REFERENCE_TESTS,
        "tests/test_state_checks.py",
    ],
    "vae_jax/train.py": JAX_TRAINING_TESTS,
    "vae_jax/trainer.py": JAX_TRAINING_TESTS,
    "vae_jax/data_parallel.py": JAX_TRAINING_TESTS,
    "vae_torch/losses.py": [
        "tests/test_losses.py",
        *REFERENCE_TESTS,
        "tests/test_input_checks.py",
    ],
    "vae_torch/input_checks.py": [
        "tests/test_input_checks.py",
        "tests/test_loss_setting_contracts.py",
        "tests/test_losses.py",
        *REFERENCE_TESTS,
        "tests/test_state_checks.py",
    ],
    "vae_torch/train.py": TORCH_TRAINING_TESTS,
    "vae_torch/trainer.py": TORCH_TRAINING_TESTS,
    "vae_torch/data_parallel.py": TORCH_TRAINING_TESTS,
}

# cosmic-ray's operators that are run (``cosmic-ray operators`` lists them all). Its binary and
# comparison operators replace each operator by every other one (``+`` by ``-``, ``*``, ``/``,
# ``//``, ``%``, ``**``, ``<<``, ``>>``, ``|``, ``&``, ``^``): most of those only raise a
# TypeError on floats and cost a test run each, so one or two replacements per operator are
# kept, the ones a person is likely to write by mistake. ``|`` appears only in annotations here
# (never evaluated: ``from __future__ import annotations``), so it is not mutated.
OPERATORS: list[str] = [
    "core/ReplaceBinaryOperator_Add_Sub",
    "core/ReplaceBinaryOperator_Sub_Add",
    "core/ReplaceBinaryOperator_Mul_Div",
    "core/ReplaceBinaryOperator_Div_Mul",
    "core/ReplaceBinaryOperator_Pow_Mul",
    "core/ReplaceBinaryOperator_FloorDiv_Div",
    "core/ReplaceBinaryOperator_Mod_FloorDiv",
    "core/ReplaceBinaryOperator_RShift_LShift",
    "core/ReplaceComparisonOperator_Eq_NotEq",
    "core/ReplaceComparisonOperator_NotEq_Eq",
    "core/ReplaceComparisonOperator_Lt_LtE",
    "core/ReplaceComparisonOperator_LtE_Lt",
    "core/ReplaceComparisonOperator_Gt_GtE",
    "core/ReplaceComparisonOperator_GtE_Gt",
    "core/ReplaceComparisonOperator_Is_IsNot",
    "core/ReplaceComparisonOperator_IsNot_Is",
    "core/ReplaceUnaryOperator_USub_UAdd",
    "core/ReplaceUnaryOperator_Delete_Not",
    "core/AddNot",
    "core/ReplaceTrueWithFalse",
    "core/ReplaceFalseWithTrue",
    "core/ReplaceAndWithOr",
    "core/ReplaceOrWithAnd",
    "core/ReplaceBreakWithContinue",
    "core/ReplaceContinueWithBreak",
    "core/ExceptionReplacer",
    "core/NumberReplacer",
    "core/RemoveDecorator",
    "core/ZeroIterationForLoop",
]

# A mutant's tests may run this many times longer than the unmutated baseline (plus a constant
# for the interpreter start) before the mutant counts as killed by a timeout; generous, because
# the machine is shared and a run at low priority is slowed by whatever else runs.
TIMEOUT_FACTOR = 5.0
TIMEOUT_CONSTANT_S = 30.0
