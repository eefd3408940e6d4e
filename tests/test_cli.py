"""The command group: every command loads under its name and is listed by --help; library errors name Python
parameters and the group shows the running command's flag for them."""
import click
import pytest
from click.testing import CliRunner

from embedx.cli.main import COMMANDS, EmbedxGroup, cli, error_line, flag_for
from embedx.errors import EmbedxError, StoreError

from tests.conftest import invoke


def command(name):
    return cli.get_command(None, name)


@pytest.mark.parametrize("cmd, param, flag", [
    ("drift", "knn_k", "--knn-k"),
    ("measure", "silhouette_mode", "--silhouette"),
    ("import", "paired_array", "--paired-array"),
    ("embed", "chunk_rows", "--chunk-rows"),
    ("finetune", "weight_decay", "--weight-decay"),
    ("transfer", "out", "--out"),
    ("info", "store", "STORE"),
    ("predict", "history_path", "--history"),
])
def test_flag_for_a_parameter(cmd, param, flag):
    assert flag_for(command(cmd), param) == flag


def test_flag_for_an_unknown_parameter_or_no_command():
    assert flag_for(command("measure"), "knn_k") is None
    assert flag_for(None, "knn_k") is None


def test_error_line_puts_the_flag_in_place_of_the_parameter():
    e = EmbedxError("knn_k must be >= 1, got 0", param="knn_k")
    assert str(e) == "knn_k must be >= 1, got 0" and e.param == "knn_k"
    assert error_line(e, command("drift")) == "error: --knn-k must be >= 1, got 0"
    # a parameter the message does not spell out is named in front; a longer identifier is left alone
    assert error_line(EmbedxError("must be >= 1", param="knn_k"), command("drift")) == "error: --knn-k: must be >= 1"
    assert (error_line(EmbedxError("knn_k_max and knn_k differ", param="knn_k"), command("drift"))
            == "error: knn_k_max and --knn-k differ")
    # several parameters: each shown as its flag, once
    clash = EmbedxError("paired_array replaces images/texts/labels; give one or the other (images: x.npy)",
                        param=("paired_array", "images", "texts", "labels"))
    assert error_line(clash, command("import")) == ("error: --paired-array replaces --images/--texts/--labels; give "
                                                    "one or the other (images: x.npy)")
    # no parameter, or one the command has no flag for (a Python-API-only argument): the message as it is
    assert error_line(StoreError("no store at x"), command("info")) == "error: no store at x"
    assert error_line(EmbedxError("knn_k must be >= 1", param="knn_k"), command("info")) == "error: knn_k must be >= 1"


def test_group_renders_a_parameter_error_as_one_line_with_the_flag():
    group = EmbedxGroup(name="embedx")

    @group.command("rank")
    @click.option("--knn-k", default=10)
    def rank(knn_k):
        raise EmbedxError(f"knn_k must be >= 1, got {knn_k}", param="knn_k")

    r = CliRunner().invoke(group, ["rank", "--knn-k", "0"])
    assert r.exit_code == 2
    assert r.output.strip() == "error: --knn-k must be >= 1, got 0"


def test_every_command_in_the_table_loads_under_its_name():
    for name in COMMANDS:
        assert command(name).name == name
    assert cli.list_commands(None) == sorted(COMMANDS)


def test_help_lists_every_command_with_the_first_words_of_its_docstring():
    r = invoke("--help")
    assert r.exit_code == 0
    listing = {ln.split()[0]: ln for ln in r.output.split("Commands:")[1].splitlines() if ln.strip()}
    assert sorted(listing) == sorted(COMMANDS)
    for name in COMMANDS:
        first_words = " ".join(command(name).help.split()[:3])
        assert first_words in listing[name], (name, listing[name])
