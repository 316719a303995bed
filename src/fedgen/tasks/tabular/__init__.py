"""Table synthesizers (TVAE, CTGAN); importing this package registers them."""

from fedgen.tasks.tabular.base import TableTask
from fedgen.tasks.tabular.ctgan import CtganTask
from fedgen.tasks.tabular.tvae import TvaeTask
from fedgen.tasks.tabular.vertical_ctgan import VerticalCtganTask
from fedgen.tasks.tabular.vertical_tvae import VerticalTvaeTask

__all__ = ["CtganTask", "TableTask", "TvaeTask", "VerticalCtganTask", "VerticalTvaeTask"]
