"""What Sensu sends, pure and sans-IO: the event model, its two shapes, the filters, the framing.

Above the bottom floor and below everything else: nothing here does I/O or
reads the configuration, so every floor above can use it.
"""
