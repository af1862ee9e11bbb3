"""What people look at: the HTML report (``report``, ``sections``, ``figures``,
``importance``), the live view of a running sweep (``live``), and ``sweep status``
(``status``)."""
