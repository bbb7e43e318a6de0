"""Which sketched problems match: image, text, the numbers rule, the answer rule, the picture guard."""

from __future__ import annotations

from mathse.data.duplicates import SketchIndex, check_stream
from mathse.data.sketches import Sketch, text_fields
from mathse.run.config import DataCheckConfig

T = DataCheckConfig(text_similarity=0.4, image_distance=4, text_image_distance=16, picture_check=False)
PIC = 0x0F0F_3C3C_A5A5_5A5A


def sketch(pid: str, question: str, images: tuple[int, ...] = (), answer: tuple[float, ...] = ()) -> Sketch:
    return Sketch.from_row({"id": pid, **text_fields(question, 64), "answer": answer, "q": question[:120],
                            "images": [(f"{h:016x}", f"{h:016x}") for h in images], "unreadable": [], "paths": []})


def flip(value: int, bits: int) -> int:
    return value ^ ((1 << bits) - 1)  # the lowest `bits` bits flipped


def index_of(*sketches: Sketch) -> SketchIndex:
    index = SketchIndex(T)
    for s in sketches:
        index.add(s, "bench")
    return index


def test_same_picture_with_a_reworded_question_is_an_image_match() -> None:
    index = index_of(sketch("b1", "What is 27 + 4?", (PIC,)), sketch("b2", "What is 3 + 9?", (flip(PIC, 30),)))
    [match] = index.matches(sketch("s1", "Add the numbers in the boxes, 27 and 4: the total?", (flip(PIC, 3),)))
    assert (match.id, match.signal, match.image_distance) == ("b1", "image", 3)
    [both] = index.matches(sketch("s0", "Compute the value of 27 + 4.", (flip(PIC, 3),)))
    assert (both.id, both.signal) == ("b1", "text+image") and both.text_similarity >= T.text_similarity
    [by_text] = index.matches(sketch("s2", "Compute 27 + 4.", (flip(PIC, 9),)))  # the image too far; the text near
    assert (by_text.signal, by_text.image_distance) == ("text", 9) and by_text.text_similarity >= T.text_similarity
    assert index.matches(sketch("s3", "Compute 27 + 4.", (flip(PIC, 20),))) == []  # and with another picture: none


def test_other_numbers_or_another_numeric_answer_make_another_problem() -> None:
    index = index_of(sketch("b1", "What is 27 + 4?", (PIC,), (31.0,)))
    assert index.matches(sketch("s1", "What is 27 + 5?", (PIC,))) == []  # the numbers rule
    assert index.matches(sketch("s2", "What is 27 + 4?", (PIC,), (30.0,))) == []  # the answer rule
    assert [m.signal for m in index.matches(sketch("s3", "What is 27 + 4?", (PIC,), (31.0,)))] == ["text+image"]
    relaxed = SketchIndex(T.model_copy(update={"require_same_numbers": False, "require_same_answer": False}))
    relaxed.add(sketch("b1", "What is 27 + 4?", (PIC,), (31.0,)), "bench")
    assert len(relaxed.matches(sketch("s1", "What is 27 + 5?", (PIC,), (32.0,)))) == 1


def test_same_words_over_another_picture_is_not_a_match_but_text_alone_is() -> None:
    index = index_of(sketch("b1", "Find x in the triangle.", (PIC,)))
    assert index.matches(sketch("s1", "Find x in the triangle.", (flip(PIC, 32),))) == []
    [near] = index.matches(sketch("s2", "find x in the triangle", (flip(PIC, 10),)))  # close enough for text
    assert (near.signal, near.text_similarity) == ("text", 1.0)
    [textual] = index.matches(sketch("s3", "Find x in the triangle!"))  # no image on one side: text decides
    assert textual.signal == "text"


def test_stream_reports_contamination_and_later_copies_within_and_across_files() -> None:
    bench = index_of(sketch("b1", "What is 27 + 4?", (PIC,)))
    seed = [sketch("s1", "What is 27 + 4?", (PIC,)), sketch("s2", "What is 3 + 9?", (flip(PIC, 40),))]
    pool = [sketch("p1", "what is 3 + 9", (flip(PIC, 41),)), sketch("p2", "What is 8 + 8?", (flip(PIC, 20),))]
    verdicts = {v.sketch.id: v for v in check_stream(bench, [("seed", seed), ("pool", pool)], T)}
    assert [m.id for m in verdicts["s1"].contamination] == ["b1"] and verdicts["s1"].duplicates == []
    assert verdicts["s2"].contamination == [] and verdicts["s2"].duplicates == []
    assert [(m.source, m.id) for m in verdicts["p1"].duplicates] == [("seed", "s2")]  # the first copy is kept
    assert verdicts["p2"].contamination == [] and verdicts["p2"].duplicates == []


def test_index_is_a_file_that_close_removes_and_finds_what_was_added_before_and_after_a_commit(tmp_path) -> None:
    path = tmp_path / "index.sqlite"
    with SketchIndex(T, path) as index:
        for i in range(10_005):  # past a commit (every 10,000)
            index.add(sketch(f"b{i}", f"What is {i} + {i + 1}?", (PIC ^ (i << 20),)), "bench")
        assert path.is_file() and len(index) == 10_005
        assert [m.id for m in index.matches(sketch("q", "what is 9999 + 10000"))] == ["b9999"]
        assert [m.id for m in index.matches(sketch("q", "What is 10004 + 10005?"))] == ["b10004"]
        [by_picture] = index.matches(sketch("q", "Which is larger?", (flip(PIC ^ (7 << 20), 4),)))
        assert (by_picture.id, by_picture.signal, by_picture.image_distance) == ("b7", "image", 4)
    assert not path.exists()
