"""sensu"""
