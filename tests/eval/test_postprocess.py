from mixmerge.eval.postprocess import (
    extract_code_block,
    first_sentence,
    sanitize_chat_answer,
    truncate_body,
    truncate_function,
)

BASE_OUTPUT = '''    for idx, elem in enumerate(numbers):
        for idx2, elem2 in enumerate(numbers):
            if idx != idx2:
                distance = abs(elem - elem2)
                if distance < threshold:
                    return True

    return False


def main():
    print(has_close_elements([1.0, 2.0], 0.5))

if __name__ == "__main__":
    main()
'''


def test_base_completion_stops_at_the_next_top_level_statement():
    body = truncate_body(BASE_OUTPUT)
    assert body.endswith("    return False")
    assert "def main" not in body and "__main__" not in body


def test_base_completion_stops_at_unlisted_top_level_code_and_markdown():
    out = "    return sorted(set(l))\n\nresult = unique([5, 3, 5])\n"
    assert truncate_body(out) == "    return sorted(set(l))"
    out = "    return x * 2\n```\n\nThis doubles x."
    assert truncate_body(out) == "    return x * 2"
    out = "    return a + b<|endoftext|>garbage"
    assert truncate_body(out) == "    return a + b"


def test_base_completion_keeps_blank_lines_and_comments_inside_the_body():
    out = "    total = 0\n\n    # sum the values\n    for v in values:\n        total += v\n    return total\n# end\n"
    assert truncate_body(out) == "    total = 0\n\n    # sum the values\n    for v in values:\n        total += v\n    return total"


def test_mbpp_completion_keeps_the_function_and_its_imports():
    out = ("import math\ndef is_not_prime(n):\n    for i in range(2, int(math.sqrt(n)) + 1):\n"
           "        if n % i == 0:\n            return True\n    return False\n\nprint(is_not_prime(10))\n")
    code = truncate_function(out)
    assert code.startswith("import math\ndef is_not_prime") and code.endswith("    return False")
    assert "print" not in code
    out2 = "def f(x):\n    return x\nf(3)\n"
    assert truncate_function(out2) == "def f(x):\n    return x"


CHAT_ANSWER = '''Sure! Here is an implementation:

```python
from typing import List


def has_close_elements(numbers: List[float], threshold: float) -> bool:
    for i, a in enumerate(numbers):
        for b in numbers[i + 1:]:
            if abs(a - b) < threshold:
                return True
    return False


# Example usage
print(has_close_elements([1.0, 2.0, 3.0], 0.5))
result = has_close_elements([1.0, 2.8], 0.3)
```

This function compares every pair of numbers.
'''


def test_chat_answer_is_reduced_to_imports_and_definitions():
    code = sanitize_chat_answer(CHAT_ANSWER, "has_close_elements")
    assert code.startswith("from typing import List")
    assert "def has_close_elements" in code and code.rstrip().endswith("return False")
    assert "print(" not in code and "result =" not in code and "Sure" not in code


def test_chat_answer_picks_the_block_that_defines_the_entry_point():
    answer = "First the tests:\n```python\nassert f(1) == 2\n```\nThen the code:\n```python\ndef f(x):\n    return x + 1\n```"
    assert extract_code_block(answer, "f") == "def f(x):\n    return x + 1\n"
    assert sanitize_chat_answer(answer, "f") == "def f(x):\n    return x + 1"


def test_chat_answer_without_fences_and_cut_mid_line_still_parses():
    answer = "def g(s):\n    return s[::-1]\n\ndef h(s):\n    return g(s"  # generation hit max_new_tokens
    assert sanitize_chat_answer(answer, "g") == "def g(s):\n    return s[::-1]"


def test_decorators_and_unterminated_fence_are_kept():
    answer = "```python\nimport functools\n\n@functools.lru_cache(None)\ndef fib(n):\n    return n if n < 2 else fib(n - 1) + fib(n - 2)\n"
    code = sanitize_chat_answer(answer, "fib")
    assert code.startswith("import functools\n@functools.lru_cache(None)\ndef fib(n):")


def test_summary_is_cut_at_the_first_sentence_or_line():
    assert first_sentence(" Returns the sum of two numbers. It uses the + operator.") == "Returns the sum of two numbers."
    assert first_sentence(" Parse the config file\ndef foo():") == "Parse the config file"
    assert first_sentence("Compute 3.5 times x. Then stop.") == "Compute 3.5 times x."
