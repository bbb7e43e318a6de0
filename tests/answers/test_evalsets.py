"""Benchmark loaders (real field layouts, JSON / JSONL / parquet with embedded PNGs) and scoring."""

from __future__ import annotations

import io
import json
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

from mathse.answers.benchmark_files import data_files
from mathse.answers.evalsets import EvalItem, load_benchmark
from mathse.answers.scoring import extract_answer, numeric_value, parse_judge_reply, run_judge, score_response
from mathse.run.config import BenchmarkSpec
from mathse.run.records import DataError, Problem, write_problems
from mathse.testing.openai_server import FakeOpenAIServer, last_user_text

# ---------------------------------------------------------------------------------------------
# Tiny benchmark files in the published layouts (shared with tests/stages/test_eval.py)


def png_bytes(color: tuple[int, int, int] = (200, 30, 30)) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (8, 8), color).save(buffer, format="PNG")
    return buffer.getvalue()


def save_png(path: Path, color: tuple[int, int, int] = (30, 200, 30)) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(png_bytes(color))
    return path


def _vista_meta(source: str = "GeoQA+") -> dict[str, Any]:
    return {
        "split": "testmini", "language": "english", "img_width": 8, "img_height": 8, "source": source,
        "category": "math-targeted-vqa", "task": "geometry problem solving", "context": "geometry diagram",
        "grade": "high school", "skills": ["geometry reasoning"],
    }  # fmt: skip


MATHVISTA_RECORDS: list[dict[str, Any]] = [
    {"pid": "1", "question": "By what distance d is the spring compressed?", "image": "images/1.png",
     "choices": None, "unit": None, "precision": 1, "answer": "1.2", "question_type": "free_form",
     "answer_type": "float", "metadata": _vista_meta("SciBench")},
    {"pid": "2", "question": "what is the total volume of the measuring cup?", "image": "images/2.png",
     "choices": None, "unit": "g", "precision": None, "answer": "1000", "question_type": "free_form",
     "answer_type": "integer", "metadata": _vista_meta("TextVQA")},
    {"pid": "3", "question": "△ABC的两内角平分线OB、OC相交于点O，若∠A＝110°，则∠BOC＝（）", "image": "images/3.png",
     "choices": ["135°", "140°", "145°", "150°"], "unit": None, "precision": None, "answer": "145°",
     "question_type": "multi_choice", "answer_type": "text", "metadata": _vista_meta()},
    {"pid": "4", "question": "Which points are above the line?", "image": "images/4.png",
     "choices": None, "unit": None, "precision": None, "answer": "[2, 5]", "question_type": "free_form",
     "answer_type": "list", "metadata": _vista_meta("FunctionQA")},
]  # fmt: skip


def write_mathvista_json(root: Path) -> Path:
    """GitHub layout: data/testmini.json keyed by pid, images under data/images/."""
    data = root / "data"
    for rec in MATHVISTA_RECORDS:
        save_png(data / rec["image"])
    (data / "testmini.json").write_text(json.dumps({r["pid"]: r for r in MATHVISTA_RECORDS}, ensure_ascii=False))
    return root


def write_mathvista_parquet(root: Path, n: int | None = None) -> Path:
    """HF layout: data/testmini-*.parquet with decoded_image structs (and a test split without answers)."""
    rows = []
    for i, rec in enumerate(MATHVISTA_RECORDS[:n]):
        query = f"Hint: ...\nQuestion: {rec['question']}"
        rows.append({**rec, "decoded_image": {"bytes": png_bytes((i * 40, 10, 10)), "path": None}, "query": query})
    (root / "data").mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.Table.from_pylist(rows), root / "data" / "testmini-00000-of-00001-abc.parquet")
    hidden = [{**r, "answer": ""} for r in rows]
    pq.write_table(pa.Table.from_pylist(hidden), root / "data" / "test-00000-of-00002-abc.parquet")
    return root


def _verse(i: int, version: str, question: str, answer: str, qtype: str, image: Any) -> dict[str, Any]:
    return {
        "sample_index": str(i), "problem_index": "1", "problem_version": version, "question": question,
        "image": image, "answer": answer, "question_type": qtype,
        "metadata": {"split": "testmini", "source": "GeoQA", "subject": "Plane Geometry", "subfield": "Angle"},
        "query_wo": "Please directly answer the question.\nQuestion: " + question,
        "query_cot": "Please first conduct reasoning.\nQuestion: " + question,
    }  # fmt: skip


MC_QUESTION = "In triangle ABC, angle A = 80.0, then angle CED is ()\nChoices:\nA:40°\nB:60°\nC:120°\nD:140°"


def mathverse_records(image: Any, text_only_image: Any = "") -> list[dict[str, Any]]:
    return [
        _verse(1, "Text Dominant", MC_QUESTION, "D", "multi-choice", image),
        _verse(2, "Vision Only", "", "14", "free-form", image),
        _verse(3, "Text Only", "The radius is 3 cm and the height 13 cm. Find L.", "\\sqrt{205}", "free-form",
               text_only_image),
    ]  # fmt: skip


def write_mathverse_json(root: Path) -> Path:
    save_png(root / "images_version_1-4" / "image_1.png")
    (root / "testmini.json").write_text(json.dumps(mathverse_records("images_version_1-4/image_1.png")))
    return root


def write_mathverse_parquet(root: Path) -> Path:
    rows = mathverse_records({"bytes": png_bytes(), "path": "image_1.png"}, None)
    root.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.Table.from_pylist(rows), root / "testmini.parquet")
    return root


MATHVISION_RECORDS: list[dict[str, Any]] = [
    {"id": "4", "question": "How many different digits can you find in this picture?\n<image1>", "options": [],
     "answer": "6", "solution": None, "level": 1, "subject": "counting", "image": "images/4.png"},
    {"id": "6", "question": "In which picture can we see the kittens of Misty?\n<image1>",
     "options": ["A", "B", "C", "D", "E"], "answer": "D", "solution": None, "level": 3, "subject": "logic",
     "image": "images/6.png"},
    {"id": "27", "question": "In which order will she go past the shapes?\n<image1>",
     "options": ["$\\Delta, \\square, \\bullet$", "$\\Delta, \\bullet, \\square$", "$\\bullet, \\Delta, \\square$",
                 "$\\square, \\Delta, \\bullet$", "$\\square, \\bullet, \\Delta$"],
     "answer": "A", "solution": None, "level": 5, "subject": "topology", "image": "images/27.png"},
    {"id": "59", "question": "Which side is opposite to <image3>?\n<image4>", "options": [], "answer": "C",
     "solution": None, "level": 1, "subject": "solid geometry", "image": "images/59.png"},
]  # fmt: skip


def write_mathvision_jsonl(root: Path) -> Path:
    """GitHub mathllm/MATH-V layout: data/testmini.jsonl, images/ at the repo root."""
    for rec in MATHVISION_RECORDS:
        save_png(root / rec["image"])
    (root / "data").mkdir(parents=True, exist_ok=True)
    lines = [json.dumps(r) for r in MATHVISION_RECORDS]
    (root / "data" / "testmini.jsonl").write_text("\n".join(lines) + "\n")
    (root / "data" / "test.jsonl").write_text("\n".join(lines[:1]) + "\n")
    return root


def write_mathvl_jsonl(root: Path) -> Path:
    save_png(root / "img" / "a.png")
    save_png(root / "img" / "b.png")
    rows = [
        {"id": "vl-1", "question": "Find x.", "images": ["img/a.png", "img/b.png"], "answer": "\\frac{1}{2}",
         "subject": "algebra"},
        {"question": "Which is largest?", "image": "img/a.png", "options": ["3", "5", "4"], "answer": "5",
         "subject": "arithmetic"},
    ]  # fmt: skip
    (root / "mathvl_test.jsonl").write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    return root / "mathvl_test.jsonl"


def spec(name: str, fmt: str, path: Path, **kw: Any) -> BenchmarkSpec:
    return BenchmarkSpec(name=name, format=fmt, path=path, **kw)


# ---------------------------------------------------------------------------------------------
# Loaders


def test_mathvista_github_json_layout(tmp_path: Path) -> None:
    root = write_mathvista_json(tmp_path / "MathVista")
    items = load_benchmark(spec("MathVista", "mathvista", root), tmp_path / "cache")
    assert [i.id for i in items] == ["1", "2", "3", "4"]
    float_item, unit_item, choice, listed = items
    assert float_item.question.startswith("Hint: Please answer the question requiring a floating-point number with one")
    assert "\nQuestion: By what distance" in float_item.question
    assert unit_item.question.endswith("measuring cup? (Unit: g)") and unit_item.metadata["unit"] == "g"
    assert choice.kind == "choice" and choice.answer_letter == "C" and choice.options[2] == "145°"
    assert choice.question.endswith("Choices:\n(A) 135°\n(B) 140°\n(C) 145°\n(D) 150°")
    assert "correct option letter" in choice.question
    assert listed.metadata["answer_type"] == "list" and "Python list" in listed.question
    assert float_item.metadata["precision"] == 1 and float_item.metadata["source"] == "SciBench"
    assert Path(float_item.images[0]) == (root / "data" / "images" / "1.png").resolve()
    assert not (tmp_path / "cache").exists()  # nothing embedded, nothing cached


def test_mathvista_hf_parquet_embedded_images_cached_once(tmp_path: Path) -> None:
    root = write_mathvista_parquet(tmp_path / "hf")
    cache = tmp_path / "cache"
    items = load_benchmark(spec("MathVista", "mathvista", root), cache)  # default split: testmini
    assert len(items) == 4 and items[2].answer_letter == "C"
    files = sorted(cache.iterdir())
    assert len(files) == 4 and all(f.suffix == ".png" for f in files)
    assert all(Path(i.images[0]).parent == cache.resolve() for i in items)
    assert Image.open(items[0].images[0]).size == (8, 8)
    mtimes = [f.stat().st_mtime_ns for f in files]
    again = load_benchmark(spec("MathVista", "mathvista", root, limit=2), cache)
    assert len(again) == 2 and [f.stat().st_mtime_ns for f in sorted(cache.iterdir())] == mtimes
    # The test split has no public answers: a clear error, not a silent 0 %.
    with pytest.raises(DataError, match=r"test-00000-of-00002-abc\.parquet: row 0 \(id '1'\): field 'answer' is empty"):
        load_benchmark(spec("MathVista", "mathvista", root, split="test"), cache)


def test_mathvista_choices_that_are_letters_keep_the_answer_s_position(tmp_path: Path) -> None:
    """MathVista testmini pid 849 has choices "(c)", "(d)", "(a)", "(b)", "(e)" and answer "(b)": the fourth, D."""
    record = {"pid": "849", "question": "Which label marks the largest region?", "image": "images/849.png",
              "choices": ["(c)", "(d)", "(a)", "(b)", "(e)"], "unit": None, "precision": None, "answer": "(b)",
              "question_type": "multi_choice", "answer_type": "text", "metadata": _vista_meta("IconQA")}  # fmt: skip
    save_png(tmp_path / "v" / "data" / "images" / "849.png")
    (tmp_path / "v" / "data" / "testmini.json").write_text(json.dumps({"849": record}))
    (letters,) = load_benchmark(spec("MathVista", "mathvista", tmp_path / "v"), tmp_path / "cache")
    assert letters.answer_letter == "D" and letters.question.endswith("(C) (a)\n(D) (b)\n(E) (e)")
    assert score_response(letters, "The largest region is labelled (b), so the answer is D.").correct
    assert not score_response(letters, "So the answer is B.").correct
    assert not score_response(letters, "$\\boxed{\\text{(B)}}$").correct  # a letter is the letter B, not "(b)"


def test_dry_run_loading_writes_no_images(tmp_path: Path) -> None:
    root = write_mathvista_parquet(tmp_path / "hf", n=2)
    items = load_benchmark(spec("MathVista", "mathvista", root), tmp_path / "cache", materialize=False)
    assert len(items) == 2 and not (tmp_path / "cache").exists()


def test_mathverse_json_and_parquet_versions(tmp_path: Path) -> None:
    for root in (write_mathverse_json(tmp_path / "json"), write_mathverse_parquet(tmp_path / "pq")):
        items = load_benchmark(spec("MathVerse", "mathverse", root), tmp_path / "cache")
        mc, vision_only, text_only = items
        assert [i.metadata["version"] for i in items] == ["Text Dominant", "Vision Only", "Text Only"]
        assert mc.kind == "choice" and mc.answer_letter == "D" and mc.options == ("40°", "60°", "120°", "140°")
        assert mc.question == MC_QUESTION and mc.metadata["subject"] == "Plane Geometry"
        assert vision_only.question.startswith("According to the question shown in the image")
        assert vision_only.kind == "free" and len(vision_only.images) == 1
        assert text_only.images == () and text_only.answer == "\\sqrt{205}"
    assert len(list((tmp_path / "cache").iterdir())) == 1  # one diagram, shared by both versions


def test_mathvision_layout_split_and_options(tmp_path: Path) -> None:
    root = write_mathvision_jsonl(tmp_path / "MATH-V")
    assert load_benchmark(spec("MathVision", "mathvision", root), tmp_path / "c")[0].id == "4"  # default: test
    items = load_benchmark(spec("MathVision", "mathvision", root, split="testmini"), tmp_path / "c")
    free, pictured, latex, drawn = items
    assert free.kind == "free" and free.question.endswith("<image1>") and free.metadata["subject"] == "counting"
    assert pictured.kind == "choice" and pictured.question.endswith("Choices: (A) (B) (C) (D) (E)")
    assert latex.answer_letter == "A" and "(B) $\\Delta, \\bullet, \\square$" in latex.question
    assert drawn.kind == "choice" and drawn.answer_letter == "C" and drawn.options == ()  # options in the image
    assert Path(free.images[0]) == (root / "images" / "4.png").resolve()  # resolved from the repo root
    assert data_files(root, "testmini") == [root / "data" / "testmini.jsonl"]


def test_mathvl_and_project_jsonl(tmp_path: Path) -> None:
    path = write_mathvl_jsonl(tmp_path / "vl")
    first, second = load_benchmark(spec("MathVL-test", "mathvl", path), tmp_path / "c")
    assert first.id == "vl-1" and len(first.images) == 2 and first.kind == "free"
    assert second.id == "1" and second.kind == "choice" and second.answer_letter == "B"
    assert second.question.endswith("Choices:\n(A) 3\n(B) 5\n(C) 4") and second.metadata == {"subject": "arithmetic"}

    save_png(tmp_path / "p" / "x.png")
    problems = [
        Problem(id="p1", question="What is 2+3?", images=("x.png",), answer="5", source="demo"),
        Problem(id="p2", question="Pick one.\n(A) 1\n(B) 2", answer="B"),
    ]
    write_problems(tmp_path / "p" / "probs.jsonl", problems)
    p1, p2 = load_benchmark(spec("own", "jsonl", tmp_path / "p" / "probs.jsonl"), tmp_path / "c")
    assert p1.kind == "free" and p1.images == (str((tmp_path / "p" / "x.png").resolve()),) and p1.metadata["source"]
    assert p2.kind == "choice" and p2.answer_letter == "B" and p2.options == ("1", "2")


# ---------------------------------------------------------------------------------------------
# Malformed files and records: one clear line naming file, record and field


def test_missing_field_names_file_record_and_field(tmp_path: Path) -> None:
    root = write_mathvista_json(tmp_path / "mv")
    data = json.loads((root / "data" / "testmini.json").read_text())
    del data["2"]["answer"]
    (root / "data" / "testmini.json").write_text(json.dumps(data))
    with pytest.raises(DataError) as err:
        load_benchmark(spec("MathVista", "mathvista", root), tmp_path / "c")
    assert str(err.value) == f"{root / 'data' / 'testmini.json'}: record 1 (key '2'): missing field 'answer'"


def test_parquet_missing_column_and_bad_file(tmp_path: Path) -> None:
    rows = [{k: v for k, v in r.items() if k != "question_type"} for r in mathverse_records(None, None)]
    path = tmp_path / "testmini.parquet"
    pq.write_table(pa.Table.from_pylist(rows), path)
    with pytest.raises(DataError, match=r"testmini\.parquet: row 0 \(id '1'\): missing field 'question_type'$"):
        load_benchmark(spec("MathVerse", "mathverse", path), tmp_path / "c")
    path.write_bytes(b"not parquet at all")
    with pytest.raises(DataError, match=r"testmini\.parquet: not a readable parquet file"):
        load_benchmark(spec("MathVerse", "mathverse", path), tmp_path / "c")


def test_bad_json_lines_images_duplicates_and_splits(tmp_path: Path) -> None:
    root = write_mathvision_jsonl(tmp_path / "mv")
    path = root / "data" / "testmini.jsonl"
    lines = path.read_text().splitlines()
    path.write_text("\n".join([lines[0], lines[1][:-3], *lines[2:]]) + "\n")
    with pytest.raises(DataError, match=r"testmini\.jsonl:2: invalid JSON"):
        load_benchmark(spec("V", "mathvision", path), tmp_path / "c")

    path.write_text("\n".join([lines[0], lines[0]]) + "\n")
    with pytest.raises(DataError, match=r"duplicate id '4' \(records 0 and 1\)"):
        load_benchmark(spec("V", "mathvision", path), tmp_path / "c")

    (root / "images" / "4.png").unlink()
    path.write_text(lines[0] + "\n")
    with pytest.raises(DataError, match=r"testmini\.jsonl:1 \(id '4'\): image not found: images/4\.png"):
        load_benchmark(spec("V", "mathvision", path), tmp_path / "c")

    with pytest.raises(DataError, match=r"no data file for split 'dev'"):
        load_benchmark(spec("V", "mathvision", root, split="dev"), tmp_path / "c")

    bad = tmp_path / "bad.json"
    bad.write_text('{"pid": "1", "question": "q"')
    with pytest.raises(DataError, match=r"bad\.json: invalid JSON \(.* at line 1 column \d+\)"):
        load_benchmark(spec("V", "mathvista", bad), tmp_path / "c")


def test_choice_answer_must_be_an_option(tmp_path: Path) -> None:
    rec = {**MATHVISTA_RECORDS[2], "answer": "160°", "image": None}
    path = tmp_path / "one.jsonl"
    path.write_text(json.dumps(rec, ensure_ascii=False) + "\n")
    with pytest.raises(DataError, match=r"one\.jsonl:1 \(id '3'\): field 'answer': '160°' is not one of the choices"):
        load_benchmark(spec("V", "mathvista", path), tmp_path / "c")


# ---------------------------------------------------------------------------------------------
# Extraction and scoring


def vista(answer: str, answer_type: str, precision: int | None = None, unit: str | None = None) -> EvalItem:
    meta = {"answer_type": answer_type, "precision": precision, "unit": unit, "question_type": "free_form"}
    return EvalItem(id="x", question="q", images=(), answer=answer, kind="free", metadata=meta, format="mathvista")


VISTA_CHOICE = EvalItem(
    id="c", question="q", images=(), answer="145°", kind="choice", options=("135°", "140°", "145°", "150°"),
    answer_letter="C", metadata={"answer_type": "text", "precision": None}, format="mathvista",
)  # fmt: skip


@pytest.mark.parametrize(
    ("response", "extracted", "correct"),
    [
        ("Step 1: ...\nThe final answer is \\boxed{C}", "C", True),
        ("So the answer is (C).", "C", True),
        ("\\boxed{145^\\circ}", "C", True),  # the option's text
        ("The final answer is \\boxed{B}", "B", False),
        ("C", "C", True),  # a bare letter
        ("\\boxed{17}", "17", False),  # neither a letter nor an option
        ("I cannot tell from the picture", None, False),
    ],
)
def test_multiple_choice(response: str, extracted: str | None, correct: bool) -> None:
    score = score_response(VISTA_CHOICE, response)
    assert (score.extracted, score.correct) == (extracted, correct)


@pytest.mark.parametrize(
    ("item", "response", "correct"),
    [
        (vista("1.2", "float", 1), "The final answer is \\boxed{1.23}", True),  # rounded to precision 1
        (vista("1.2", "float", 1), "\\boxed{1.3}", False),
        (vista("1.45", "float", 2), "\\boxed{1.449}", True),
        (vista("1.45", "float", 2), "\\boxed{\\frac{29}{20}}", True),
        (vista("1000", "integer", unit="g"), "\\boxed{1000 g}", True),  # unit stripped
        (vista("1000", "integer", unit="g"), "\\boxed{1000\\text{ g}}", True),
        (vista("1000", "integer", unit="g"), "The final answer is 1,000 grams.", True),
        (vista("1000", "integer", unit="g"), "\\boxed{999}", False),
        (vista("3", "integer"), "\\boxed{3.7}", False),  # no truncation to an integer
        (vista("[2, 5]", "list"), "\\boxed{[2, 5]}", True),
        (vista("[2, 5]", "list"), "The answer is 2, 5", True),
        (vista("[2, 5]", "list"), "\\boxed{[5, 2]}", False),
        (vista("[2, 5]", "list"), "\\boxed{[2]}", False),
        (vista("[1.25, 3.5]", "list", 1), "\\boxed{[1.2, 3.5]}", True),
    ],
)
def test_mathvista_numbers_units_precision_lists(item: EvalItem, response: str, correct: bool) -> None:
    assert score_response(item, response).correct is correct


def free(answer: str, fmt: str = "mathverse") -> EvalItem:
    return EvalItem(id="f", question="q", images=(), answer=answer, kind="free", format=fmt)


@pytest.mark.parametrize(
    ("answer", "response", "correct"),
    [
        ("\\frac{\\sqrt{3}}{2}", "\\boxed{\\sqrt{3}/2}", True),
        ("\\frac{\\sqrt{3}}{2}", "\\boxed{\\frac{\\sqrt3}{2}}", True),
        ("\\frac{\\sqrt{3}}{2}", "\\boxed{1/2}", False),
        ("14", "so L is about 14 cm.\nThe final answer is 14 cm", True),
        ("y=2x+1", "\\boxed{y = 1 + 2x}", True),
        ("(2,3)", "\\boxed{(2, 3)}", True),
        ("6", "6", True),  # a short bare answer
    ],
)
def test_free_form_latex(answer: str, response: str, correct: bool) -> None:
    assert score_response(free(answer), response).correct is correct


def test_options_drawn_in_the_image_use_letters_a_to_e() -> None:
    item = EvalItem(id="59", question="q", images=(), answer="C", kind="choice", answer_letter="C", format="mathvision")
    assert score_response(item, "Looking at the net, the answer is C.").correct
    assert score_response(item, "\\boxed{E}").extracted == "E"


def test_unextracted_responses() -> None:
    long_rambling = "The picture shows a cube with faces 1 2 3 and I think it is rotated twice to the left"
    gibberish = "ck\ufffdIJ\ufffdHYZrc abcd riV\x0f 24.H"  # what a random tiny model writes
    for response in (None, "", "   ", long_rambling, "no idea", gibberish, "about 6 or 7 I guess"):
        assert extract_answer(free("6"), response) is None
        assert score_response(free("6"), response).reason == "no answer found"
        assert extract_answer(VISTA_CHOICE, response) is None
    # Short bare answers are read as answers.
    assert [extract_answer(free("2"), r) for r in ("x = 2", "$\\frac{1}{2}$", "[1, 2].", "-3.5 cm")] == [
        "x = 2", "\\frac{1}{2}", "[1, 2]", "-3.5 cm",
    ]  # fmt: skip


def test_numeric_value_and_judge_reply_parsing() -> None:
    values = [numeric_value(t) for t in ("\\frac{3}{2}", "45%", "$12", "x = 3.5", "3.5 cm^2", "abc")]
    assert values == [1.5, 45.0, 12.0, 3.5, 3.5, None]
    assert numeric_value("2\\sqrt{2}") == pytest.approx(2.8284271)
    replies = ["Correct", "Incorrect.", "**Correct**", "The answer is not correct", "It is correct.", "unsure"]
    assert [parse_judge_reply(r) for r in replies] == [True, False, True, False, True, None]


def test_judge_asks_each_once_and_caches(tmp_path: Path) -> None:
    from mathse.run.config import ApiConfig

    def reply(body: dict[str, Any]) -> str:
        return "Correct" if "Reference answer: 14" in last_user_text(body) else "Incorrect"

    items = [free("14"), EvalItem(id="g", question="q2", images=(), answer="7", kind="free")]
    pending = [(items[0], "long reasoning ... so it is fourteen"), (items[1], "it is eight")]
    with FakeOpenAIServer(replies=reply) as server:
        api = ApiConfig(base_url=server.base_url, model="judge", max_retries=0)
        verdicts = run_judge(api, pending, tmp_path / "cache")
        assert {k: v["verdict"] for k, v in verdicts.items()} == {"f": "correct", "g": "incorrect"}
        assert server.chat_calls == 2
        # requests run concurrently: find the one for item "f" whatever order they arrived in
        assert any("Model response:\nlong reasoning" in last_user_text(body) for body in server.requests)
        assert run_judge(api, pending, tmp_path / "cache") == verdicts and server.chat_calls == 2  # cached
    assert run_judge(api, [], tmp_path / "cache") == {}
