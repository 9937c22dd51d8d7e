from cmrfm.cli import main

TINY = ["backbone.embed_dim=32", "backbone.depth=2", "backbone.num_heads=2", "image_size=32", "amp=off"]


def test_tasks_lists_registry(capsys):
    assert main(["tasks"]) == 0
    out = capsys.readouterr().out
    assert "sax-seg" in out and "disease-cls" in out


def test_finetune_then_evaluate_then_fewshot(tmp_path, capsys):
    run = tmp_path / "run"
    args = [
        "finetune",
        "--task",
        "landmarks",
        "synthetic=true",
        "steps=2",
        "batch_size=2",
        "folds=2",
        f"out={run}",
    ]
    assert main(args + TINY) == 0
    assert "error_mm" in capsys.readouterr().out
    weights = run / "model.safetensors"
    assert weights.is_file()
    # evaluating weights of another task is a clear error
    assert main(["evaluate", "--task", "sax-seg", "--weights", str(weights)]) == 2
    assert "holds a 'landmarks' model" in capsys.readouterr().err
    # test-time flips are for segmentation; landmarks say so instead of ignoring the flag
    assert main(["evaluate", "--task", "landmarks", "--weights", str(weights), "--tta"]) == 2
    assert "--tta applies to segmentation tasks" in capsys.readouterr().err
    sweep = tmp_path / "sweep"
    fs = ["fewshot", "--task", "sax-seg", "--k", "1,all", "--seeds", "1", "--out", str(sweep)]
    assert main([*fs, "synthetic=true", "steps=1", "batch_size=2", "folds=2", *TINY]) == 0
    out = capsys.readouterr().out
    assert "skipping the 'pretrained' method" in out and (sweep / "fewshot.png").is_file()
    rows = (sweep / "fewshot.csv").read_text().splitlines()
    assert len(rows) == 1 + 2 * 2  # scratch and baseline, k=1 and all, one seed
    # --start METHOD=WEIGHTS: malformed, and a start that contradicts its method, are one-line errors
    one = ["fewshot", "--task", "sax-seg", "--k", "1", "--seeds", "1", "--out", str(tmp_path / "s2")]
    assert main([*one, "--methods", "scratch", "--start", "scratch"]) == 2
    assert "expected METHOD=WEIGHTS" in capsys.readouterr().err
    start = ["--methods", "pretrained", "--start", f"pretrained={weights}"]
    assert main([*one, *start, "synthetic=true", *TINY]) == 2
    err = capsys.readouterr().err  # a start is weights enough for 'pretrained': not skipped, checked
    assert "must not come from random weights" in err and "Traceback" not in err


def test_finetune_bad_override_is_one_line(capsys):
    assert main(["finetune", "--task", "sax-seg", "stepz=3"]) == 2
    err = capsys.readouterr().err
    assert "unknown config key 'stepz'" in err and "Traceback" not in err


def test_usage_errors_print_usage_not_traceback(capsys):
    assert main(["data", "inspect"]) == 2
    err = capsys.readouterr().err
    assert "Missing argument" in err and "Traceback" not in err


def test_tasks_id_shows_every_setting(capsys):
    assert main(["tasks", "lge-seg"]) == 0
    out = capsys.readouterr().out
    keys = [
        "task_options.ce_class_weights",
        "task_options.prior_correction",
        "task_options.augment.rotate_deg",
    ]
    for key in [*keys, "optim.lr", "steps"]:
        assert key in out, key
    assert main(["tasks", "no-such-task"]) != 0
    assert "unknown task 'no-such-task'" in capsys.readouterr().err
