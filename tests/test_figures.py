"""The reconstruction figure reads: no title runs into an image, the error maps share one
scale shown by a colour bar, and the title names the model and the acceleration."""

from __future__ import annotations

import matplotlib.pyplot as plt
import numpy as np
import pytest

from clgnet_fastmri.figures import FIGURE_DPI, SliceView, build_figure, save_figure


def views(rows: int = 3):
    rng = np.random.default_rng(0)
    truth = rng.random((64, 64), dtype=np.float32)
    return [SliceView(f"file{i}.h5 slice 4", truth, truth * 0.5, truth * 0.9, maxval=1.0,
                      acceleration=4) for i in range(rows)]


@pytest.fixture
def drawn():
    """``drawn(model_name)``: the figure laid out and drawn at the resolution it is saved at,
    and its renderer."""
    figures = []

    def draw(model_name: str = "CLGNet"):
        fig, _ = build_figure(views(), model_name)
        figures.append(fig)
        fig.set_dpi(FIGURE_DPI)
        fig.canvas.draw()
        return fig, fig.canvas.get_renderer()

    yield draw
    for fig in figures:
        plt.close(fig)


def test_no_title_overlaps_an_image(drawn):
    fig, renderer = drawn()
    images = [ax for ax in fig.axes if ax.images and ax.get_label() != "<colorbar>"]
    assert len(images) == 15
    texts = [fig._suptitle] + [ax.title for ax in images]
    for text in texts:
        box = text.get_window_extent(renderer)
        for ax in images:
            assert not box.overlaps(ax.get_window_extent(renderer)), (text.get_text(),
                                                                      ax.get_title())


def test_error_maps_share_the_scale_their_colour_bar_states(drawn):
    fig, _ = drawn()
    colorbars = [ax for ax in fig.axes if ax.get_label() == "<colorbar>"]
    assert len(colorbars) == 3  # one per row
    assert "one scale for both maps" in colorbars[0].get_ylabel()
    first_row = [ax for ax in fig.axes if ax.images][:5]
    zero_filled_error, model_error = (ax.images[0].get_clim() for ax in first_row[3:])
    truth = views(1)[0].target
    assert zero_filled_error == model_error == (0, pytest.approx(float((truth * 0.5).max())))


@pytest.mark.parametrize("model", ["CLGNet", "Unet", "VarNet"])
def test_title_names_the_model_and_the_acceleration(drawn, model):
    fig, _ = drawn(model)
    title = fig._suptitle.get_text()
    assert model in title and "4x" in title
    assert model == "CLGNet" or "CLGNet" not in title


def test_saved_png_is_the_drawn_size(tmp_path):
    import matplotlib.image

    save_figure(views(2), tmp_path / "f.png", "Unet")
    height, width = matplotlib.image.imread(tmp_path / "f.png").shape[:2]
    assert (width, height) == (pytest.approx(5 * 3.4 * FIGURE_DPI, abs=1),
                               pytest.approx((2 * 3.6 + 0.6) * FIGURE_DPI, abs=1))
