#!/bin/sh
# Private Postfix and Dovecot instances under /srv: every <name>@localhost has a Maildir (Postfix hands each
# mail to Dovecot over LMTP, which makes the mailbox on first use) and logs in to IMAP with $MAIL_PASSWORD. Postfix listens on 127.0.0.1:$SMTP_PORT, Dovecot on $IMAP_PORT.
# Recipients matching the rules in /srv/rules (a regexp table the tests rewrite, then `postfix reload`)
# are refused with the code the rule gives: 4xx and 5xx on demand.
set -eu
: "${SMTP_PORT:=25025}" "${IMAP_PORT:=25143}" "${MAIL_PASSWORD:=test-password}"
: "${SMTPS_PORT:=25465}" "${IMAPS_PORT:=25993}"
W=/srv
mkdir -p $W/postfix/etc $W/postfix/queue $W/postfix/data $W/mail $W/dovecot/run $W/dovecot/state
touch $W/rules
# A certificate for 127.0.0.1 and localhost, made afresh: STARTTLS on $SMTP_PORT, implicit TLS on $SMTPS_PORT
# and $IMAPS_PORT. The tests read /srv/tls/cert.pem to trust it.
mkdir -p $W/tls
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -days 2 -subj /CN=localhost \
    -addext "subjectAltName=DNS:localhost,IP:127.0.0.1" -keyout $W/tls/key.pem -out $W/tls/cert.pem 2>/dev/null
chmod 644 $W/tls/cert.pem
cat > $W/postfix/etc/main.cf <<CF
compatibility_level = 3.6
queue_directory = $W/postfix/queue
data_directory = $W/postfix/data
maillog_file = $W/postfix/maillog
maillog_file_prefixes = $W
myhostname = localhost
mydomain = localdomain
inet_interfaces = 127.0.0.1
inet_protocols = ipv4
mynetworks = 127.0.0.0/8
mydestination =
local_recipient_maps =
alias_maps =
default_transport = error:offline test instance
relay_transport = error:offline test instance
smtp_dns_support_level = disabled
smtpd_peername_lookup = no
smtpd_relay_restrictions = permit_mynetworks, reject_unauth_destination
smtpd_recipient_restrictions = check_recipient_access regexp:$W/rules
virtual_mailbox_domains = localhost
smtpd_tls_cert_file = $W/tls/cert.pem
smtpd_tls_key_file = $W/tls/key.pem
smtpd_tls_security_level = may
smtpd_sasl_auth_enable = yes
smtpd_sasl_type = dovecot
smtpd_sasl_path = $W/dovecot/auth
virtual_mailbox_maps = static:any
virtual_transport = lmtp:unix:$W/dovecot/lmtp
message_size_limit = 52428800
CF
sed -e "s/^smtp \( *\)inet/127.0.0.1:$SMTP_PORT\1inet/" \
    -e 's/^\([a-z0-9.:]* *[a-z]* *[-ny] *[-ny] *\)[-y]\( \)/\1n\2/' /etc/postfix/master.cf > $W/postfix/etc/master.cf
echo "127.0.0.1:$SMTPS_PORT inet n - n - - smtpd -o smtpd_tls_wrappermode=yes" >> $W/postfix/etc/master.cf
chown postfix $W/postfix/data
chown mail:mail $W/mail
cat > $W/dovecot/dovecot.conf <<CF
protocols = imap lmtp
listen = 127.0.0.1
base_dir = $W/dovecot/run
state_dir = $W/dovecot/state
instance_name = clawden-test-dovecot
log_path = /dev/stderr
ssl = yes
ssl_cert = <$W/tls/cert.pem
ssl_key = <$W/tls/key.pem
disable_plaintext_auth = no
auth_mechanisms = plain login
mail_location = maildir:$W/mail/%n
first_valid_uid = 8
first_valid_gid = 8
passdb {
  driver = static
  args = password=$MAIL_PASSWORD
}
userdb {
  driver = static
  args = uid=8 gid=8 home=$W/mail/%n allow_all_users=yes
}
service auth {
  unix_listener $W/dovecot/auth {
    mode = 0666
  }
}
service lmtp {
  unix_listener $W/dovecot/lmtp {
    mode = 0666
  }
}
service imap-login {
  inet_listener imap {
    address = 127.0.0.1
    port = $IMAP_PORT
  }
  inet_listener imaps {
    address = 127.0.0.1
    port = $IMAPS_PORT
  }
}
CF
dovecot -c $W/dovecot/dovecot.conf
postfix -c $W/postfix/etc start
echo "mail server ready: smtp 127.0.0.1:$SMTP_PORT (smtps $SMTPS_PORT) imap 127.0.0.1:$IMAP_PORT (imaps $IMAPS_PORT)"
exec sleep infinity
