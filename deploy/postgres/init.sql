-- One database per module: agora refuses to start when two modules share one.
-- Runs once, when the postgres volume is first initialised.
CREATE DATABASE agora_order;
CREATE DATABASE agora_payment;
CREATE DATABASE agora_notification;
