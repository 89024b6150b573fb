#!/bin/sh
# Demo exec action for the "fan" device: a real one would drive a PWM pin or a smart plug.
# gatemq passes the validated speed as the first argument; exit 0 means it worked.
echo "$1" > /tmp/gatemq-demo-fan
