"""kill -9 the deductor and the order-writer in the middle of a sale; after
a restart the invariants hold and nothing accepted is lost."""
import time

from sale import assert_sold_out_cleanly, finish, start_sale


def test_kill_deductor_and_order_writer_mid_sale(stack):
    proc = start_sale(stack, 'crash-1', stock=400)
    stack.daemon('kill', 'deductor')
    stack.daemon('kill', 'order-writer')
    time.sleep(1.0)
    stack.daemon('start', 'deductor')
    stack.daemon('start', 'order-writer')
    assert_sold_out_cleanly(stack, 'crash-1', 400, finish(proc))
