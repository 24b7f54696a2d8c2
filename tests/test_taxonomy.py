import pytest

from core.errors import TaxonomyError
from core.taxonomy import load_taxonomy


def test_default_taxonomy_maps_nine_upstream_classes():
    tax = load_taxonomy()
    assert tax.type_names == ["rock_toe", "slope_drain", "toe_drain", "vegetation"]
    assert len(tax.classes) == 9
    assert tax.get_class("Toe drain- Blocked").type == "toe_drain"
    assert tax.get_class("Toe drain- Blocked").condition == "blocked"
    assert tax.get_class("rock toe damaged").condition == "damaged"
    assert tax.get_class("vegetation").condition is None
    assert [c.condition for c in tax.classes_for_type("slope_drain")] == ["normal", "blocked", "damaged"]
    assert [c.condition for c in tax.classes_for_type("rock_toe")] == ["normal", "damaged"]
    assert not tax.needs_condition("vegetation")
    assert tax.needs_condition("toe_drain")
    assert tax.class_for("slope_drain", "blocked").name == "slope drain blocked"


def test_label_space_detection():
    tax = load_taxonomy()
    assert tax.label_space(["rock_toe", "vegetation"]) == "types"
    assert tax.label_space(["Toe drain", "vegetation"]) == "classes"
    with pytest.raises(TaxonomyError, match="neither"):
        tax.label_space(["cat", "dog"])


def test_unknown_lookups_name_the_options():
    tax = load_taxonomy()
    with pytest.raises(TaxonomyError, match="expected one of"):
        tax.get_class("Toe Drain")
    with pytest.raises(TaxonomyError, match="unknown object type"):
        tax.classes_for_type("culvert")


def test_second_domain_loads_from_its_own_file(tmp_path):
    path = tmp_path / "micro.toml"
    path.write_text(
        'name = "microscopy"\nconditions = ["sharp", "blurred"]\n'
        '[[types]]\nname = "cell"\n[[types]]\nname = "debris"\n'
        '[[classes]]\nname = "cell ok"\ntype = "cell"\ncondition = "sharp"\n'
        '[[classes]]\nname = "cell blur"\ntype = "cell"\ncondition = "blurred"\n'
        '[[classes]]\nname = "debris"\ntype = "debris"\n'
    )
    tax = load_taxonomy(path)
    assert tax.name == "microscopy"
    assert [c.name for c in tax.classes_for_type("cell")] == ["cell ok", "cell blur"]
    assert not tax.needs_condition("debris")


@pytest.mark.parametrize(
    "body, message",
    [
        ('[[types]]\nname = "a"\n[[classes]]\nname = "x"\ntype = "b"\n', "names type 'b'"),
        ('[[types]]\nname = "a"\n[[types]]\nname = "a"\n', "unique type names"),
        ('conditions=["ok"]\n[[types]]\nname = "a"\n[[classes]]\nname = "x"\ntype = "a"\ncondition = "bad"\n', "condition 'bad'"),
        ('[[types]]\nname = "a"\n[[classes]]\nname = "x"\ntype = "a"\n[[classes]]\nname = "y"\ntype = "a"\n', "one class per"),
        ("types = [", "valid TOML"),
        ("name = 'x'\n", "missing"),
    ],
)
def test_bad_taxonomy_files_are_named_errors(tmp_path, body, message):
    path = tmp_path / "bad.toml"
    path.write_text(body)
    with pytest.raises(TaxonomyError, match=message):
        load_taxonomy(path)


def test_missing_taxonomy_file(tmp_path):
    with pytest.raises(TaxonomyError, match="not found"):
        load_taxonomy(tmp_path / "nope.toml")
