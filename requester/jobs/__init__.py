"""Job scheduling: job and execution records, placement, offers, execution updates, the job API."""
