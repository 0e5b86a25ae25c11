"""What the timed tests share: a way to print their figures in every run's output, passed or not."""

import pytest


@pytest.fixture
def show(capsys):
    def show(text: str) -> None:
        with capsys.disabled():
            print(text)

    return show
