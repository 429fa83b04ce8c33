"""How a course notebook's kernel is set up by its imports cell (``course.setup_notebook()``): plotly's renderer,
no library progress bars but the training run's own, tensors shown as rounded tables, and a user error
(:class:`gopd_lab.errors.UserError`) shown in one line with its full traceback folded below it, as the CLI
prints it.

Each setting is the library's documented switch: ``transformers.utils.logging.disable_progress_bar`` (the
"Loading weights" bar of ``from_pretrained``), ``huggingface_hub.utils.disable_progress_bars`` (its download and
upload bars, "Writing model shards" among them), ``IPython``'s ``set_custom_exc`` and its display formatters.
"""

from __future__ import annotations

import html
import sys
import traceback
from typing import Any

__all__ = ["quiet_libraries", "setup_notebook", "tensor_table"]

TABLE_DECIMALS = 4
"""Decimals of a tensor shown as a table."""
MAX_TABLE_CELLS = 4096
"""Tensors with more entries than this keep torch's own (abbreviated) text."""


def quiet_libraries() -> None:
    """Silence the progress bars of transformers' loading and huggingface_hub's file transfers (the training
    run's own bar, ``train(cfg, progress=True)``, stays: one bar per run)."""
    import huggingface_hub.utils
    import transformers.utils.logging

    transformers.utils.logging.disable_progress_bar()
    huggingface_hub.utils.disable_progress_bars()


def tensor_table(tensor: Any = None, decimals: int = TABLE_DECIMALS, **named: Any) -> Any:
    """A 0-, 1- or 2-D tensor as a pandas table rounded to ``decimals`` (rows × positions), for display; with
    keyword tensors of one shape, one table with a column block per name (``tensor_table(lp_teacher=…, rank=…)``)."""
    import pandas as pd

    if named:
        tables = {name: tensor_table(t, decimals) for name, t in named.items()}
        return pd.concat(tables, axis=1)
    values = tensor.detach().cpu()
    if values.ndim == 0:
        values = values.reshape(1, 1)
    elif values.ndim == 1:
        values = values.reshape(1, -1)
    frame = pd.DataFrame(values.float().numpy() if values.is_floating_point() else values.numpy())
    return frame.round(decimals) + 0.0 if values.is_floating_point() else frame  # + 0.0: no "-0.0000"


def _tensor_html(tensor: Any) -> str | None:
    if tensor.ndim > 2 or tensor.numel() > MAX_TABLE_CELLS or tensor.is_complex():
        return None  # torch's own text
    shape = "×".join(map(str, tensor.shape)) or "scalar"
    caption = f"<small>tensor {shape}, {str(tensor.dtype).removeprefix('torch.')}</small>"
    return caption + tensor_table(tensor).to_html(border=0)


def _one_line_user_error(shell: Any, etype: type, value: BaseException, tb: Any, tb_offset: Any = None) -> None:
    """Show a UserError as the CLI does, ``<label>: <message>`` in one line, its traceback folded below."""
    from IPython.display import HTML, display

    label = getattr(value, "label", "error")
    full = "".join(traceback.format_exception(etype, value, tb))
    print(f"{label}: {value}", file=sys.stderr)
    display(HTML("<details><summary>full traceback</summary><pre>" + html.escape(full) + "</pre></details>"))


def setup_plotting() -> None:
    """Show plotly figures in this kernel as plotly's JSON mimetype plus a small CDN-loading HTML fallback.

    JupyterLab renders ``application/vnd.plotly.v1+json`` offline with the extension shipped inside the
    ``plotly`` package; nbconvert/nbviewer pages use the HTML fallback, which loads plotly.js from its CDN.
    Pinning the renderer keeps plotly.js itself out of executed notebooks whatever plotly's default is (plotly
    5's Jupyter default adds the ``notebook`` renderer, which writes plotly.js into the notebook).
    """
    import plotly.io as pio

    pio.renderers.default = "plotly_mimetype+notebook_connected"


def setup_notebook() -> None:
    """Set up this kernel for the course: plotly's renderer (``course.setup_plotting``), quiet libraries, tensors as
    rounded tables and printed without scientific notation, one-line user errors. Outside IPython only the
    first three apply."""
    import torch

    from gopd_lab.errors import UserError

    setup_plotting()
    quiet_libraries()
    torch.set_printoptions(precision=TABLE_DECIMALS, sci_mode=False)
    try:
        from IPython import get_ipython
    except ImportError:
        return
    shell = get_ipython()
    if shell is None:
        return
    shell.display_formatter.formatters["text/html"].for_type(torch.Tensor, _tensor_html)
    shell.set_custom_exc((UserError,), _one_line_user_error)
