"""Which tests each tier runs (applied by tests/conftest.py at collection).

  make test-fast   -m "not slow and not extended"   logic tests on tiny models, < 3 min
  make test        -m "not extended"                 what CI runs, goal < 15 min on 2 cores (11.1 min
                                                     of pytest on a fresh clone at 31a0736)
  make test-all    everything, the fault sweep too    (about an hour on 2 cores)

``make test`` and ``make test-fast`` compile at XLA's backend optimization level 0 (the
Makefile's ``TEST_XLA_FLAGS``): on a clean clone the suite is bound by XLA:CPU's compiler,
which -O0 makes about twice as fast; ``make test-all`` runs at XLA's defaults.

``SLOW``: tests that take more than ~5 s on the 2-core CPU (measured with
``pytest --durations``; most also carry ``@pytest.mark.slow`` in their file).
``EXTENDED``: heavy variants of what ``make test`` already covers: the same code path on
a bigger member of a family (ResNet-34/101 beside ResNet-18/50, ResNet-56 beside
ResNet-20), a second parameter of an equivalence already shown, a CLI over a library
call the suite tests directly. Every id must exist (checked at collection of the whole
suite), so a renamed test cannot silently leave its tier.
``HEAVY_FIRST``: the files that take longest, heaviest first; tests/conftest.py runs them
before every other file, so pytest-xdist's file scheduling (``--dist loadfile
--no-loadscope-reorder``) hands the long files out first and the short ones fill the gaps
(longest-first scheduling: the two workers finish within about one short file of each other).
"""

# Seconds per file in `make test` (pytest --junitxml, 2-core CPU, 2026-12-06), heaviest first.
HEAVY_FIRST = (
    "tests/test_faults.py",  # 250
    "tests/test_parity.py",  # 184
    "tests/test_methods_contract.py",  # 153
    "tests/test_hobs_method.py",  # 114
    "tests/test_graph_surgery.py",  # 91
    "tests/test_any_model.py",  # 87
    "tests/test_pipeline.py",  # 86
    "tests/test_readme.py",  # 66
    "tests/test_bench.py",  # 63
    "tests/test_hobs_refit.py",  # 55
    "tests/test_block_ell_models.py",  # 45
    "tests/test_models.py",  # 43
    "tests/test_methods_training_time.py",  # 41
    "tests/test_sensitivity.py",  # 32
    "tests/test_train_checkpoint.py",  # 26
    "tests/test_train_distributed.py",  # 26
    "tests/test_rspar.py",  # 24
)

EXTENDED = {
    # the pipeline's measured-latency timing glue through a real bench run (20 s); the loop
    # itself is tested in make test with a synthetic runtime
    "tests/test_aligned_allocation.py::test_bench_measure_times_an_exported_candidate_against_dense",
    "tests/test_pipeline.py::test_prune_stage_closes_a_latency_target_by_measurement",
    "tests/test_pipeline.py::test_a_measured_prune_stage_stopped_by_sigterm_resumes_from_its_journal",
    # parity: resnet18/50 and resnet20 carry the same block code in both dtypes
    *(f"tests/test_parity.py::test_parity_standard[{m}-{d}]"
      for m in ("resnet34", "resnet101", "resnet56") for d in ("float32", "float64")),
    "tests/test_parity.py::test_non_default_widths_export_to_torch_and_back[resnet101]",
    "tests/test_graph_surgery.py::test_surgery_invariants[resnet101]",
    # the fast depthwise path on a second mobile CNN (MobileNetV2 runs in make test; the
    # 5x5 kernels and stride 2 are covered by the layer-level float64 tests)
    "tests/test_depthwise.py::test_zoo_mobile_cnn_through_the_fast_path_equals_its_apply[efficientnet_b0_small]",
    "tests/test_models.py::test_arbitrary_widths_build_and_size_every_axis[resnet101]",
    "tests/test_graph.py::test_groups_are_exactly_the_zoo_width_entries[resnet101]",
    "tests/test_parity.py::test_torch_flax_torch_round_trip_is_bit_exact[resnet101]",
    # the one-pass refit equals the definition with one sweep in make test; two here
    "tests/test_hobs_refit.py::test_one_pass_refit_equals_the_layer_by_layer_definition[2]",
    # the groups equal Torch-Pruning's on ResNet-50 and ViT-B/16 in make test
    *(f"tests/test_graph_torch_pruning.py::test_same_groups_same_pruning_as_torch_pruning[{m}]"
      for m in ("resnet18", "mobilenet_v2", "efficientnet_b0")),
    # narrow zoo models run: surgery invariants cover pruned MobileNetV2/EfficientNet-B0
    *(f"tests/test_models.py::test_narrow_model_runs_and_is_finite[{m}]" for m in ("mobilenet_v2", "efficientnet_b0")),
    "tests/test_block_ell_models.py::test_resnet50_block_ell_equals_dense_with_zeroed_blocks",
    # the sensitivity CLI over analyze(), which test_sensitivity checks directly
    "tests/test_sensitivity.py::test_cli_writes_the_json_schema_and_readable_pngs",
    # AST across 4 devices and 2 processes (the plain loop's multi-host test is in make test)
    "tests/test_train_ast_resume.py::test_four_devices_and_two_processes_select_like_one_device",
    # more of the same families (a clean-clone make test ran 17.2 min of pytest on 2 cores
    # with them, 2026-12-06): ResNet-18 beside ResNet-20/50 in parity, ResNet-34/56 surgery
    # beside ResNet-18/20, ResNet-20's narrow forward (its surgery and contract runs cover it)
    *(f"tests/test_parity.py::test_parity_standard[resnet18-{d}]" for d in ("float32", "float64")),
    "tests/test_graph_surgery.py::test_surgery_invariants[resnet34]",
    "tests/test_graph_surgery.py::test_surgery_invariants[resnet56]",
    "tests/test_models.py::test_narrow_model_runs_and_is_finite[resnet20]",
    # Block-ELL on ResNet-50 (MobileNetV2 and ViT-B/16 stay; the layers are the same kernels)
    "tests/test_block_ell_models.py::test_resnet50_block_ell_exports_to_torch",
    # R-SPAR's grid network and re-rank internals (its contract runs stay in make test)
    "tests/test_rspar.py::test_rerank_returns_the_candidate_with_the_best_hessian_split_loss",
    "tests/test_rspar.py::test_grid_network_equals_the_hobs_pruned_network",
    "tests/test_rspar.py::test_grid_network_of_a_vit_equals_the_hobs_pruned_network",
    # a training-time method through the prune stage (the contract runs of DepGraph,
    # JTP, BilevelPruning and StructAlign through the training callback stay in make test)
    "tests/test_pipeline.py::test_training_time_method_through_the_prune_stage",
    # ResNet-50's float64 parity (its float32 parity, and float64 on ResNet-20, MobileNetV2,
    # EfficientNet-B0 and ViT-B/16 stay); the NNX ViT beside the NNX MBConv net and the linen ViT
    "tests/test_parity.py::test_parity_standard[resnet50-float64]",
    "tests/test_any_model.py::test_hobs_and_magnitude_prune_any_network[vit_nnx]",
    # a clean-clone make test ran 19.0 min of pytest (cold compile cache, 2026-12-06): the
    # two-process lock (the single-host lock and every fault stay in the chain), Block-ELL on
    # MobileNetV2 (ViT-B/16's stays), ResNet-50 surgery (its groups against Torch-Pruning and
    # its export at arbitrary widths stay), EfficientNet-B0's arbitrary-width export (its
    # surgery invariants stay)
    "tests/test_faults.py::test_multihost_runs_take_the_lock_through_process_0",
    "tests/test_block_ell_models.py::test_mobilenet_v2_pointwise_and_classifier_block_ell",
    "tests/test_graph_surgery.py::test_surgery_invariants[resnet50]",
    "tests/test_parity.py::test_non_default_widths_export_to_torch_and_back[efficientnet_b0]",
    # the small-image forms (issue 19): the same blocks as their ImageNet siblings, whose parity,
    # export and surgery stay in make test; make test keeps mobilenet_v2_small's float64 parity
    # (the stride-1 convs to 1e-12), vit_tiny_p4's parity, round trip and width axes, the graph
    # groups of all three, and tests/test_models_small.py (strides on both sides, surgery, MACs)
    *(f"tests/test_parity.py::test_parity_standard[{m}]"
      for m in ("mobilenet_v2_small-float32", "efficientnet_b0_small-float32", "efficientnet_b0_small-float64")),
    *(f"tests/test_parity.py::test_non_default_widths_export_to_torch_and_back[{m}]"
      for m in ("mobilenet_v2_small", "efficientnet_b0_small", "vit_tiny_p4")),
    *(f"tests/test_parity.py::test_torch_flax_torch_round_trip_is_bit_exact[{m}]"
      for m in ("mobilenet_v2_small", "efficientnet_b0_small")),
    *(f"tests/test_graph_surgery.py::test_surgery_invariants[{m}]"
      for m in ("mobilenet_v2_small", "efficientnet_b0_small", "vit_tiny_p4")),
    *(f"tests/test_models.py::test_arbitrary_widths_build_and_size_every_axis[{m}]"
      for m in ("mobilenet_v2_small", "efficientnet_b0_small")),
    # Torch-Pruning on the mobile CNNs: make test keeps the classifier choice on MobileNetV2
    # (the part that differs from ResNet); the bisection itself is ResNet's, tested there
    "tests/test_oneshot_tp.py::test_the_classifier_kept_whole_is_the_last_linear_of_any_cnn[efficientnet_b0_small-classifier.1]",
    "tests/test_oneshot_tp.py::test_mobilenet_v2_channel_pruning_meets_the_target",
    # R-SPAR's reward on MobileNetV2 (dropout in train mode; 25 s); make test keeps the
    # helper's own test on a two-layer model
    "tests/test_rspar.py::test_reward_runs_on_a_network_with_dropout",
    # EfficientNet-B0's BN statistics without stochastic depth (40 s); make test keeps the
    # module-level test on a residual toy
    "tests/test_bn_mode.py::test_efficientnet_statistics_come_from_the_network_without_stochastic_depth",
    # a clean-clone CI took 902 s for the whole script at 9ef46dd (budget 15 min): AST's
    # kill -9 resume with sample selection (threshold selection's stays: the same checkpoint
    # and queue code), EfficientNet-B0's float64 parity (its float32 parity and float64 on
    # MobileNetV2 and ViT-B/16 stay; the SE and SiLU layers are in the float32 check)
    "tests/test_train_ast_resume.py::test_kill_9_then_rerun_matches_an_uninterrupted_ast_run[sample]",
    # the reducible score adds a read-only reference file to the same resume path
    "tests/test_train_ast_resume.py::test_kill_9_then_rerun_matches_an_uninterrupted_ast_run[threshold:reducible]",
    "tests/test_parity.py::test_parity_standard[efficientnet_b0-float64]",
}

SLOW = {
    *(f"tests/test_aligned_allocation.py::test_a_measured_latency_budget_corrects_the_table_until_the_measurement_"
      f"is_on_target[{a}]" for a in ("global", "uniform")),
    # the zoo's mobile CNNs through the fast depthwise path, eval and train mode (25-40 s)
    "tests/test_depthwise.py::test_zoo_mobile_cnn_through_the_fast_path_equals_its_apply",
    # H-OBS on depthwise / SE / attention blocks (5-13 s each under load, 2026-12-06)
    "tests/test_hobs_blocks.py::test_depthwise_channel_is_compensated_through_the_pointwise_projection",
    "tests/test_hobs_blocks.py::test_squeeze_excitation_squeeze_fc_is_a_compensated_consumer",
    "tests/test_hobs_blocks.py::test_attention_heads_removed_whole_and_projections_compensated",
    "tests/test_hobs_blocks.py::test_the_method_reports_the_layers_it_did_not_refit",
    "tests/test_methods_contract.py::test_method_contract",
    "tests/test_methods_contract.py::test_method_contract_outside_the_zoo",
    "tests/test_hobs_refit.py::test_one_pass_refit_equals_the_layer_by_layer_definition",
    "tests/test_hobs_refit.py::test_cross_stats_reduce_a_in_calibration_batches_with_its_executables",
    "tests/test_hobs_refit.py::test_cross_stats_match_explicit_rows",
    "tests/test_hobs_refit.py::test_refit_of_dense_general_layers_keeps_bias_shapes",
    "tests/test_hobs_method.py::test_hobs_beats_the_no_hessian_ablation",
    "tests/test_hobs_method.py::test_params_target_with_rounding_is_met_within_one_percent",
    "tests/test_hobs_method.py::test_propagation_brings_the_pruned_network_closer_to_the_dense_one",
    "tests/test_hobs_method.py::test_bad_input_is_a_one_line_error",
    "tests/test_parity.py::test_parity_standard",
    "tests/test_parity.py::test_non_default_widths_export_to_torch_and_back",
    "tests/test_sensitivity.py",
    "tests/test_faults.py",
    "tests/test_graph_torch_pruning.py::test_same_groups_same_pruning_as_torch_pruning",
    "tests/test_models.py::test_narrow_model_runs_and_is_finite",
    "tests/test_models.py::test_train_mode_updates_batch_stats_and_uses_dropout_rng",
    "tests/test_graph_surgery.py::test_surgery_invariants",
    "tests/test_graph_surgery.py::test_masking_and_pruning_differ_for_layernormed_stream",
    "tests/test_block_ell_models.py",
    "tests/test_rspar.py::test_rerank_returns_the_candidate_with_the_best_hessian_split_loss",
    "tests/test_rspar.py::test_grid_network_equals_the_hobs_pruned_network",
    "tests/test_rspar.py::test_grid_network_of_a_vit_equals_the_hobs_pruned_network",
    "tests/test_export.py::test_pruned_vit_exports_with_its_head_layout",
    "tests/test_streams.py::test_calibration_and_bn_do_not_depend_on_workers",
    "tests/test_train_fit.py",
    "tests/test_hobs_hessian.py::test_chunked_accumulation_equals_one_product",
    "tests/test_errors.py::test_nan_statistics_stop_pruning_with_the_layer_named_before_anything_is_written",
    "tests/test_graph_plan.py::test_concatenated_channels_are_separate_groups_at_offsets",
    "tests/test_methods_baselines.py::test_regularizer_matches_torch_pruning",
    "tests/test_methods_parts.py::test_a_hybrid_is_one_line_and_obs_compensation_helps_magnitude_selection",
    "tests/test_bench.py",
    "tests/test_any_model.py",
    "tests/test_export_any.py",
    "tests/test_train_ast_resume.py",
    "tests/test_train_ast.py::test_random_and_infobatch_rules",
    "tests/test_train_ast.py::test_fit_with_ast_compiles_once_and_trains_only_full_batches_of_selected",
    "tests/test_train_ast.py::test_grad_proxy_is_the_exact_norm_of_the_head_weight_gradient",
    "tests/test_train_ast.py::test_reducible_score_never_trains_on_what_the_reference_cannot_learn",
    # > ~15 s each while the machine ran other jobs (load 13), 2026-12-06
    "tests/test_block_ell_ops.py::test_check_grads_float64",
    "tests/test_errors.py::test_main_ends_a_mistake_in_one_line_and_writes_nothing",
    "tests/test_graph.py::test_group_ids_are_deterministic_and_topological",
    "tests/test_graph.py::test_groups_are_exactly_the_zoo_width_entries",
    "tests/test_graph_plan.py::test_plan_for_another_model_or_widths_is_refused",
    "tests/test_graph_plan.py::test_uniform_magnitude_search_reaches_half_the_macs",
    "tests/test_hobs_hessian.py::test_hessians_equal_numpy_on_captured_inputs_and_stream",
    "tests/test_hobs_hessian.py::test_layers_of_one_shape_share_one_compiled_reduction",
    "tests/test_hobs_hessian.py::test_shift2d_gram_equals_the_patch_gram",
    "tests/test_hobs_refit.py::test_cross_stats_bad_input",
    "tests/test_methods_parts.py::test_timing_hook_reports_every_phase_and_each_groups_selection",
    "tests/test_models.py::test_arbitrary_widths_build_and_size_every_axis",
    "tests/test_parity.py::test_cli_reports_pass_and_exit_code",
    "tests/test_parity.py::test_torch_flax_torch_round_trip_is_bit_exact",
    "tests/test_pipeline.py::test_end_to_end_then_rerun_skips_every_stage",
    "tests/test_rspar.py::test_reward_compiles_once_and_batches",
    "tests/test_rspar.py::test_a_search_resumes_only_its_own_checkpoints",
    # the setup validator: 16x16 networks, but graph building and orbax saves take seconds
    "tests/test_validate.py::test_a_method_that_accepts_the_model_passes",
    "tests/test_validate.py::test_a_method_that_refuses_the_model_fails",
    "tests/test_validate.py::test_compare_refuses_models_whose_macs_differ_by_2_percent",
    "tests/test_validate.py::test_the_cli_prints_one_line_per_check_and_exits_non_zero",
    "tests/test_pipeline.py::test_runs_of_one_process_evaluate_each_network_once",
    "tests/test_models_small.py::test_stride_one_stem_and_stage_2_keep_28x28_in_flax_and_torch",
    "tests/test_models_small.py::test_surgery_at_reduced_widths_gives_the_zoo_model_at_those_widths",
}
