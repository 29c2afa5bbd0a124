"""The boards: one module per board, each defining ``BOARD`` (a
:class:`~cnnforge.boards.board.Board`). :data:`cnnforge.boards.board.BOARDS` collects them."""
