"""The one check of a drop list (issue 19): the CLI, the app and sessions refuse the same lists the same way."""

from workbench.cli.main import main


def test_one_drop_check_refuses_repeats_and_counts_that_disagree(tiny_model_dir, capsys):
    """A drop list is checked once, the same way from the CLI, the app and sessions (issue 19: `--drop-by
    0,0 --drop-blocks 2` dropped one block and exited 0)."""
    from workbench.domain.plan import drop_problem

    tiny = ["--samples", "4", "--seqlen", "32", "--probes", ""]
    assert main(["prune", "--model", str(tiny_model_dir), *tiny, "--sparsity", "0", "--drop-by", "0,0",
                 "--drop-blocks", "2"]) == 2
    assert "--drop-by: block 0 chosen twice in 0,0" in capsys.readouterr().err
    assert main(["prune", "--model", str(tiny_model_dir), *tiny, "--sparsity", "0", "--drop-by", "0,1",
                 "--drop-blocks", "3"]) == 2
    assert "--drop-blocks/--drop-by: 3 blocks to drop asked, but 2 named (0,1)" in capsys.readouterr().err
    assert drop_problem([1, 3], blocks=4) is None and drop_problem([1, 3], blocks=4, asked=2) is None
    assert drop_problem([0, 1, 2, 3], blocks=4).startswith("cannot drop every block")
    assert drop_problem([4], blocks=4) == "no block 4 (the model has blocks 0..3)"
    assert drop_problem([True]) == "expected block numbers, got [True]"
