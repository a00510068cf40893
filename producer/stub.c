/* placeholder until the producer lands */
void sheaf_producer_placeholder(void);
void sheaf_producer_placeholder(void) {}
