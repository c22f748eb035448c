"""The one option vocabulary: every command documents every option and uses the shared names."""

from __future__ import annotations

import argparse

import pytest

from digitlab.cli import build_parser


def _commands() -> dict[str, argparse.ArgumentParser]:
    parser = build_parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    out: dict[str, argparse.ArgumentParser] = {}
    for name, p in sub.choices.items():
        nested = [a for a in p._actions if isinstance(a, argparse._SubParsersAction)]
        if nested:
            for inner, q in nested[0].choices.items():
                out[f"{name} {inner}"] = q
        else:
            out[name] = p
    return out


COMMANDS = _commands()


def test_every_command_of_the_readme_is_registered():
    expected = {"data info", "data verify", "data download", "explore", "models", "train", "evaluate", "compare",
                "study", "predict", "serve", "export", "bench", "ensemble", "sweep", "robustness", "label-issues"}
    assert expected <= set(COMMANDS)


@pytest.mark.parametrize("name", sorted(COMMANDS))
def test_every_option_has_help_text(name):
    p = COMMANDS[name]
    for action in p._actions:
        if isinstance(action, argparse._HelpAction):
            continue
        assert action.help and action.help.strip(), f"{name}: {action.option_strings or action.dest} has no help"


def _group_epilog(group: str) -> str:
    parser = build_parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return sub.choices[group].epilog or ""


@pytest.mark.parametrize("name", sorted(COMMANDS))
def test_every_command_has_examples(name):
    group = name.split()[0]
    epilog = COMMANDS[name].epilog or ""
    if " " in name:  # `data info` and its siblings share the group's examples
        epilog += _group_epilog(group)
    assert "examples:" in epilog and f"digitlab {group}" in epilog, name


def _options(p: argparse.ArgumentParser) -> dict[str, argparse.Action]:
    return {s: a for a in p._actions for s in a.option_strings}


@pytest.mark.parametrize("name", sorted(COMMANDS))
def test_shared_options_mean_the_same_everywhere(name):
    opts = _options(COMMANDS[name])
    if "--device" in opts:
        assert opts["--device"].default == "auto", f"{name}: --device must default to auto"
    for retired in ("--no-progress", "--first-seed", "--plot", "--top-n"):
        assert retired not in opts, f"{name}: {retired} was replaced by the shared vocabulary"
    if "--top-k" in opts:
        assert name == "predict", "--top-k means 'the K most likely classes' and belongs to predict"
    if "--json" in opts:
        assert "JSON" in (opts["--json"].help or "")
    if "--dataset" in opts:
        assert "fashion-mnist" in (opts["--dataset"].help or "")


@pytest.mark.parametrize("name", ["train", "evaluate", "compare", "study", "predict", "export", "bench", "ensemble",
                                  "robustness", "label-issues", "sweep"])
def test_commands_that_run_models_take_device_and_data_options(name):
    opts = _options(COMMANDS[name])
    assert "--device" in opts, name
    if name not in {"predict"}:
        assert {"--dataset", "--data-dir"} <= set(opts), name


@pytest.mark.parametrize("name", ["evaluate", "compare", "study", "predict", "export", "bench", "ensemble",
                                  "robustness", "label-issues", "sweep", "models", "explore", "train"])
def test_commands_that_report_results_have_json(name):
    assert "--json" in _options(COMMANDS[name]), name


@pytest.mark.parametrize("name", ["evaluate", "export", "robustness"])
def test_single_model_commands_take_the_model_both_ways(name):
    from digitlab.cli import model_from_args

    p = COMMANDS[name]
    opts = _options(p)
    assert "--model" in opts
    positional = [a for a in p._actions if not a.option_strings and a.dest == "model_pos"]
    assert positional, f"{name} takes MODEL positionally too"
    ns = argparse.Namespace(model_pos="default", model=None, model_default="default")
    assert model_from_args(ns) == "default"
    from digitlab.errors import ConfigError

    with pytest.raises(ConfigError, match="given twice"):
        model_from_args(argparse.Namespace(model_pos="a", model="b"))


def test_a_closed_pipe_ends_quietly(capsys):
    """`digitlab models | head -0`: the reader is gone; no traceback, no error line, status 141."""
    import io
    import os
    import sys

    from digitlab.cli import main

    read_fd, write_fd = os.pipe()
    os.close(read_fd)
    out = io.TextIOWrapper(os.fdopen(write_fd, "wb", buffering=0), write_through=True)
    old = sys.stdout
    sys.stdout = out
    try:
        assert main(["models"]) == 141
    finally:
        sys.stdout = old
        try:
            out.close()
        except OSError:
            pass
    assert capsys.readouterr().err == ""


def test_a_named_command_builds_only_its_own_parser_with_the_same_options():
    """``digitlab predict …`` parses with the predict module alone (start-up time), the same way the full
    parser does; commands registered by another module, typos and no command get the full parser."""
    from digitlab.cli import build_parser

    def choices(parser: argparse.ArgumentParser) -> set[str]:
        sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
        return set(sub.choices)

    full = build_parser()
    assert choices(build_parser("predict")) == {"predict"}
    assert choices(build_parser("label-issues")) == {"label-issues"}
    for other in ("compare", "ensemble", "predcit", "--help", None):
        assert choices(build_parser(other)) == choices(full), other
    argv = ["predict", "a.png", "--number", "--json", "--model", "default"]
    assert vars(build_parser("predict").parse_args(argv)) == vars(full.parse_args(argv))
