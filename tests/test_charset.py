"""Names decode with their character set and fold for accent-insensitive search."""

from __future__ import annotations

import pytest

from pacs.charset import decode_text, name_words, search_key


@pytest.mark.parametrize(
    ("name", "key"),
    [
        ("Nguyễn^Văn An", "nguyen^van an"),
        ("Đặng^Thị Hoa", "dang^thi hoa"),
        ("TRẦN^MINH ĐỨC", "tran^minh duc"),
        ("Müller^Jürgen", "muller^jurgen"),
        ("O'Brien", "o'brien"),
    ],
)
def test_search_key_folds_case_and_accents(name: str, key: str) -> None:
    assert search_key(name) == key


def test_query_and_stored_name_meet_on_the_same_key() -> None:
    assert search_key("nguyen").startswith("nguyen")
    assert search_key("Nguyễn^Văn An").startswith(search_key("NGUYỄN"))
    assert search_key("Đặng").startswith(search_key("dang"))


def test_utf8_name_decodes_under_iso_ir_192() -> None:
    raw = "Nguyễn^Văn An".encode()
    assert decode_text(raw, ["ISO_IR 192"], person_name=True) == "Nguyễn^Văn An"


def test_utf8_mislabelled_as_latin1_is_recovered() -> None:
    raw = "Đặng^Thị Hoa".encode()
    assert decode_text(raw, ["ISO_IR 100"], person_name=True) == "Đặng^Thị Hoa"
    assert decode_text(raw, [""], person_name=True) == "Đặng^Thị Hoa"


def test_iso_ir_192_without_underscore_is_accepted() -> None:
    raw = "Bùi^Thị".encode()
    assert decode_text(raw, ["ISO IR 192"], person_name=True) == "Bùi^Thị"


def test_latin1_name() -> None:
    raw = "Müller^Jürgen".encode("latin-1")
    assert decode_text(raw, ["ISO_IR 100"], person_name=True) == "Müller^Jürgen"


def test_iso_2022_japanese_name() -> None:
    # PS3.5 Annex H example: Yamada^Tarou=山田^太郎=やまだ^たろう
    raw = b"Yamada^Tarou=\x1b$B;3ED\x1b(B^\x1b$BB@O:\x1b(B=\x1b$B$d$^$@\x1b(B^\x1b$B$?$m$&\x1b(B"
    decoded = decode_text(raw, ["", "ISO 2022 IR 87"], person_name=True)
    assert decoded == "Yamada^Tarou=山田^太郎=やまだ^たろう"


def test_garbage_never_raises() -> None:
    assert decode_text(b"\xff\xfe\x00abc", ["ISO_IR 999"], person_name=True)


def test_name_words_split_components_representations_and_spaces() -> None:
    assert name_words(search_key("Nguyễn^Văn An=NGUYEN^VAN AN")) == {"nguyen", "van", "an"}
    assert name_words(search_key("Đặng^Thị  Bình^^")) == {"dang", "thi", "binh"}
    assert name_words("") == set()
    assert name_words("a" * 80) == {"a" * 64}
