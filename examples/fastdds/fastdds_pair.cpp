// A Fast-DDS (2.9, Debian's libfastrtps) publisher and subscriber for ipclink's tests and
// docs: `fastdds_pair pub` writes FASTDDS_SAMPLES samples (sequence number and a text of
// FASTDDS_BYTES bytes) on topic "ipclink/frames" once a subscriber matched, reliably, and
// waits until they are acknowledged; `fastdds_pair sub` takes them, checks every sequence
// number and text, and exits 0 once all arrived, saying how fast they came. Both print
// the host id Fast-DDS gave their participant (the SHM transport only talks to
// participants of the same id), each participant they discover, and each match. The
// transports are whatever the default profile says: FASTRTPS_DEFAULT_PROFILES_FILE=
// /shm-only.xml for shared memory only. With FASTDDS_WAIT_FOR (a path), pub and sub wait,
// once done, until that path exists before letting go of their participant and its
// segments, so that a test can look at them.
//
// For the benchmark, `fastdds_pair ping` writes FASTDDS_SAMPLES samples on "ipclink/ping"
// one at a time, each once `fastdds_pair pong` sent the previous one back on
// "ipclink/pong", and prints the round trips' median and 99th percentile.
//
// The sample type is written by hand (no fastddsgen): CDR encapsulation header, uint32,
// string.

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>
#include <thread>
#include <unistd.h>
#include <vector>

#include <fastcdr/Cdr.h>
#include <fastcdr/FastBuffer.h>
#include <fastcdr/exceptions/NotEnoughMemoryException.h>
#include <fastdds/dds/domain/DomainParticipant.hpp>
#include <fastdds/dds/domain/DomainParticipantFactory.hpp>
#include <fastdds/dds/domain/DomainParticipantListener.hpp>
#include <fastdds/dds/publisher/DataWriter.hpp>
#include <fastdds/dds/publisher/Publisher.hpp>
#include <fastdds/dds/subscriber/DataReader.hpp>
#include <fastdds/dds/subscriber/SampleInfo.hpp>
#include <fastdds/dds/subscriber/Subscriber.hpp>
#include <fastdds/dds/topic/Topic.hpp>
#include <fastdds/dds/topic/TopicDataType.hpp>
#include <fastdds/dds/topic/TypeSupport.hpp>

using namespace eprosima::fastdds::dds;
using eprosima::fastrtps::rtps::InstanceHandle_t;
using eprosima::fastrtps::rtps::SerializedPayload_t;

struct Frame {
    uint32_t seq = 0;
    std::string text;
};

class FrameType : public TopicDataType {
public:
    FrameType() {
        setName("ipclink::Frame");
        m_typeSize = 4 + 4 + 4 + 1 + 64 * 1024;
        m_isGetKeyDefined = false;
    }

    bool serialize(void* data, SerializedPayload_t* payload) override {
        auto* f = static_cast<Frame*>(data);
        eprosima::fastcdr::FastBuffer buffer(reinterpret_cast<char*>(payload->data), payload->max_size);
        eprosima::fastcdr::Cdr ser(buffer, eprosima::fastcdr::Cdr::DEFAULT_ENDIAN,
                                   eprosima::fastcdr::Cdr::DDS_CDR);
        payload->encapsulation = ser.endianness() == eprosima::fastcdr::Cdr::BIG_ENDIANNESS ? CDR_BE : CDR_LE;
        try {
            ser.serialize_encapsulation();
            ser << f->seq << f->text;
        } catch (eprosima::fastcdr::exception::NotEnoughMemoryException&) {
            return false;
        }
        payload->length = static_cast<uint32_t>(ser.getSerializedDataLength());
        return true;
    }

    bool deserialize(SerializedPayload_t* payload, void* data) override {
        auto* f = static_cast<Frame*>(data);
        eprosima::fastcdr::FastBuffer buffer(reinterpret_cast<char*>(payload->data), payload->length);
        eprosima::fastcdr::Cdr deser(buffer, eprosima::fastcdr::Cdr::DEFAULT_ENDIAN,
                                     eprosima::fastcdr::Cdr::DDS_CDR);
        try {
            deser.read_encapsulation();
            payload->encapsulation = deser.endianness() == eprosima::fastcdr::Cdr::BIG_ENDIANNESS ? CDR_BE : CDR_LE;
            deser >> f->seq >> f->text;
        } catch (eprosima::fastcdr::exception::Exception&) {
            return false;
        }
        return true;
    }

    std::function<uint32_t()> getSerializedSizeProvider(void* data) override {
        auto* f = static_cast<Frame*>(data);
        // Header, sequence number, string length, characters and NUL, padding.
        return [f]() { return static_cast<uint32_t>(4 + 4 + 4 + f->text.size() + 1 + 8); };
    }

    void* createData() override { return new Frame(); }
    void deleteData(void* data) override { delete static_cast<Frame*>(data); }
    bool getKey(void*, InstanceHandle_t*, bool) override { return false; }
};

// A number from the environment, from 1 to `max` (`fallback` when unset); exits 2 otherwise.
static unsigned long env_or(const char* name, unsigned long fallback, unsigned long max) {
    const char* v = std::getenv(name);
    if (v == nullptr || *v == '\0') {
        return fallback;
    }
    char* end = nullptr;
    unsigned long n = std::strtoul(v, &end, 10);
    if (*end != '\0' || n == 0 || n > max) {
        std::fprintf(stderr, "fastdds: %s must be a number from 1 to %lu\n", name, max);
        std::exit(2);
    }
    return n;
}

// Exits 1 naming what could not be made.
template <typename T>
static T* need(T* made, const char* role, const char* what) {
    if (made == nullptr) {
        std::printf("fastdds %s: cannot create the %s\n", role, what);
        std::fflush(stdout);
        std::exit(1);
    }
    return made;
}

// The text of sample `seq`: `bytes` letters that depend on it.
static std::string text_of(uint32_t seq, size_t bytes) {
    std::string t(bytes, 'a');
    for (size_t i = 0; i < bytes; ++i) {
        t[i] = static_cast<char>('a' + (seq + i) % 26);
    }
    return t;
}

// Every sample kept and delivered, through the transports only (no data sharing).
template <typename Qos>
static Qos reliable_keep_all(Qos qos) {
    qos.reliability().kind = RELIABLE_RELIABILITY_QOS;
    qos.history().kind = KEEP_ALL_HISTORY_QOS;
    qos.data_sharing().off();
    return qos;
}

class Listener : public DomainParticipantListener {
public:
    explicit Listener(const char* role) : role_(role) {}

    void on_participant_discovery(DomainParticipant*,
                                  eprosima::fastrtps::rtps::ParticipantDiscoveryInfo&& info) override {
        if (info.status == eprosima::fastrtps::rtps::ParticipantDiscoveryInfo::DISCOVERED_PARTICIPANT) {
            const auto& p = info.info.m_guid.guidPrefix.value;
            std::printf("fastdds %s: participant discovered, host id %02x%02x\n", role_, p[3], p[2]);
            std::fflush(stdout);
        }
    }

    void on_publication_matched(DataWriter*, const PublicationMatchedStatus& s) override {
        if (s.current_count_change > 0) {
            std::printf("fastdds %s: matched\n", role_);
            std::fflush(stdout);
        }
    }

    void on_subscription_matched(DataReader*, const SubscriptionMatchedStatus& s) override {
        if (s.current_count_change > 0) {
            std::printf("fastdds %s: matched\n", role_);
            std::fflush(stdout);
        }
    }

private:
    const char* role_;
};

// Waits until `done()` (an endpoint matched, a file appeared); exits 1 at the deadline.
template <typename F>
static void wait_until(F done, const char* role, const char* what,
                         std::chrono::steady_clock::time_point deadline) {
    while (!done()) {
        if (std::chrono::steady_clock::now() > deadline) {
            std::printf("fastdds %s: no %s before the deadline\n", role, what);
            std::fflush(stdout);
            std::exit(1);
        }
        std::this_thread::sleep_for(std::chrono::milliseconds(20));
    }
}

static bool writer_matched(DataWriter* w) {
    PublicationMatchedStatus s;
    return w->get_publication_matched_status(s) == ReturnCode_t::RETCODE_OK && s.current_count > 0;
}

static bool reader_matched(DataReader* r) {
    SubscriptionMatchedStatus s;
    return r->get_subscription_matched_status(s) == ReturnCode_t::RETCODE_OK && s.current_count > 0;
}

// A reliable, keep-all writer on `topic` in a publisher of its own; exits 1 when it
// cannot be made.
static DataWriter* writer_on(DomainParticipant* participant, Topic* topic, Listener* listener, const char* role) {
    Publisher* publisher = need(participant->create_publisher(PUBLISHER_QOS_DEFAULT), role, "publisher");
    return need(publisher->create_datawriter(topic, reliable_keep_all(DATAWRITER_QOS_DEFAULT), listener), role,
                "writer");
}

// The same for a reader.
static DataReader* reader_on(DomainParticipant* participant, Topic* topic, Listener* listener, const char* role) {
    Subscriber* subscriber = need(participant->create_subscriber(SUBSCRIBER_QOS_DEFAULT), role, "subscriber");
    return need(subscriber->create_datareader(topic, reliable_keep_all(DATAREADER_QOS_DEFAULT), listener), role,
                "reader");
}

// Takes the next valid sample from `reader` into `f`, waiting up to the deadline; false
// when none came.
static bool take_one(DataReader* reader, Frame& f, std::chrono::steady_clock::time_point deadline) {
    SampleInfo info;
    for (;;) {
        while (reader->take_next_sample(&f, &info) == ReturnCode_t::RETCODE_OK) {
            if (info.valid_data) {
                return true;
            }
        }
        if (std::chrono::steady_clock::now() > deadline) {
            return false;
        }
        reader->wait_for_unread_message(eprosima::fastrtps::Duration_t(1, 0));
    }
}

// ping: each sample written once the previous one came back; prints the round trips.
static int ping(DomainParticipant* participant, Topic* out, Topic* back, Listener* listener, uint32_t samples,
                size_t bytes, std::chrono::steady_clock::time_point deadline) {
    DataWriter* writer = writer_on(participant, out, listener, "ping");
    DataReader* reader = reader_on(participant, back, listener, "ping");
    wait_until([&] { return writer_matched(writer) && reader_matched(reader); }, "ping", "pong", deadline);
    std::vector<uint64_t> rtt;
    rtt.reserve(samples);
    Frame f;
    f.text = text_of(0, bytes);
    Frame echo;
    for (uint32_t seq = 0; seq < samples; ++seq) {
        f.seq = seq;
        const auto sent = std::chrono::steady_clock::now();
        if (!writer->write(&f)) {
            std::printf("fastdds ping: write %u failed\n", seq);
            return 1;
        }
        if (!take_one(reader, echo, deadline) || echo.seq != seq || echo.text.size() != bytes) {
            std::printf("fastdds ping: sample %u did not come back\n", seq);
            return 1;
        }
        rtt.push_back(static_cast<uint64_t>(
            std::chrono::duration_cast<std::chrono::nanoseconds>(std::chrono::steady_clock::now() - sent).count()));
    }
    std::sort(rtt.begin(), rtt.end());
    std::printf("fastdds ping: %u round trips of %zu bytes, rtt_p50_ns %llu rtt_p99_ns %llu\n", samples, bytes,
                static_cast<unsigned long long>(rtt[rtt.size() / 2]),
                static_cast<unsigned long long>(rtt[std::min(rtt.size() - 1, rtt.size() * 99 / 100)]));
    return 0;
}

// pong: sends every sample of "ipclink/ping" back on "ipclink/pong".
static int pong(DomainParticipant* participant, Topic* in, Topic* back, Listener* listener, uint32_t samples,
                std::chrono::steady_clock::time_point deadline) {
    DataReader* reader = reader_on(participant, in, listener, "pong");
    DataWriter* writer = writer_on(participant, back, listener, "pong");
    // A sample sent back before the writer matched would reach no one.
    wait_until([&] { return writer_matched(writer); }, "pong", "ping", deadline);
    Frame f;
    for (uint32_t n = 0; n < samples; ++n) {
        if (!take_one(reader, f, deadline)) {
            std::printf("fastdds pong: %u of %u samples came\n", n, samples);
            return 1;
        }
        if (!writer->write(&f)) {
            std::printf("fastdds pong: write %u failed\n", f.seq);
            return 1;
        }
    }
    writer->wait_for_acknowledgments(eprosima::fastrtps::Duration_t(30, 0));
    std::printf("fastdds pong: %u samples sent back\n", samples);
    return 0;
}

int main(int argc, char** argv) {
    const char* roles[] = {"pub", "sub", "ping", "pong"};
    const char* role = nullptr;
    for (const char* r : roles) {
        if (argc == 2 && std::strcmp(argv[1], r) == 0) {
            role = r;
        }
    }
    if (role == nullptr) {
        std::fprintf(stderr, "usage: fastdds_pair pub|sub|ping|pong\n");
        return 2;
    }
    const bool pub = std::strcmp(role, "pub") == 0;
    const uint32_t samples = static_cast<uint32_t>(env_or("FASTDDS_SAMPLES", 1000, 1000000));
    const size_t bytes = env_or("FASTDDS_BYTES", 1024, 60000);
    const auto deadline =
        std::chrono::steady_clock::now() + std::chrono::seconds(env_or("FASTDDS_TIMEOUT_S", 600, 86400));

    // On the heap and never freed: the factory may delete the participant at exit, after
    // main returned, and its threads may still call the listener until then.
    auto* listener = new Listener(role);
    auto* factory = DomainParticipantFactory::get_instance();
    DomainParticipant* participant =
        need(factory->create_participant(0, PARTICIPANT_QOS_DEFAULT, listener, StatusMask::all()), role,
             "participant (is the profile's transport available?)");
    // The preload gives every process the same host id: with the network transports on
    // too, participants on other machines would pass for local ones.
    if (std::getenv("LD_PRELOAD") != nullptr && participant->get_qos().transport().use_builtin_transports) {
        std::printf("fastdds %s: LD_PRELOAD is set but the network transports are on; "
                    "give FASTRTPS_DEFAULT_PROFILES_FILE the shared-memory-only profile\n",
                    role);
        std::fflush(stdout);
        std::exit(1);
    }
    const auto& own = participant->guid().guidPrefix.value;
    std::printf("fastdds %s: host id %02x%02x\n", role, own[3], own[2]);
    std::fflush(stdout);
    TypeSupport type(new FrameType());
    if (type.register_type(participant) != ReturnCode_t::RETCODE_OK) {
        need<Topic>(nullptr, role, "type");
    }
    auto topic_named = [&](const char* name) {
        return need(participant->create_topic(name, type.get_type_name(), TOPIC_QOS_DEFAULT), role, "topic");
    };
    int rc = 0;
    if (std::strcmp(role, "ping") == 0) {
        rc = ping(participant, topic_named("ipclink/ping"), topic_named("ipclink/pong"), listener, samples, bytes,
                  deadline);
    } else if (std::strcmp(role, "pong") == 0) {
        rc = pong(participant, topic_named("ipclink/ping"), topic_named("ipclink/pong"), listener, samples, deadline);
    } else if (pub) {
        DataWriter* writer = writer_on(participant, topic_named("ipclink/frames"), listener, role);
        wait_until([&] { return writer_matched(writer); }, role, "subscriber", deadline);
        for (uint32_t seq = 0; seq < samples; ++seq) {
            Frame f;
            f.seq = seq;
            f.text = text_of(seq, bytes);
            if (!writer->write(&f)) {
                std::printf("fastdds pub: write %u failed\n", seq);
                return 1;
            }
        }
        if (writer->wait_for_acknowledgments(eprosima::fastrtps::Duration_t(120, 0)) != ReturnCode_t::RETCODE_OK) {
            std::printf("fastdds pub: not every sample was acknowledged\n");
            rc = 1;
        } else {
            std::printf("fastdds pub: %u samples sent and acknowledged\n", samples);
        }
    } else {
        DataReader* reader = reader_on(participant, topic_named("ipclink/frames"), listener, role);
        uint32_t next = 0;
        Frame f;
        SampleInfo info;
        std::chrono::steady_clock::time_point first;
        while (next < samples) {
            if (std::chrono::steady_clock::now() > deadline) {
                std::printf("fastdds sub: %u of %u samples arrived\n", next, samples);
                return 1;
            }
            if (!reader->wait_for_unread_message(eprosima::fastrtps::Duration_t(1, 0))) {
                continue;
            }
            while (reader->take_next_sample(&f, &info) == ReturnCode_t::RETCODE_OK) {
                if (!info.valid_data) {
                    continue;
                }
                if (f.seq != next || f.text != text_of(f.seq, bytes)) {
                    std::printf("fastdds sub: sample %u arrived where %u was due, or damaged\n", f.seq, next);
                    return 1;
                }
                if (next == 0) {
                    first = std::chrono::steady_clock::now();
                }
                ++next;
            }
        }
        // From the first sample's arrival to the last's: discovery and matching left out.
        const double s = std::chrono::duration<double>(std::chrono::steady_clock::now() - first).count();
        std::printf("fastdds sub: %u samples arrived in order in %.3f s (%.1f MB/s)\n", samples, s,
                    s > 0 ? static_cast<double>(samples - 1) * static_cast<double>(bytes) / s / 1e6 : 0.0);
    }
    std::fflush(stdout);
    const char* release = std::getenv("FASTDDS_WAIT_FOR");
    if (rc == 0 && release != nullptr && *release != '\0') {
        wait_until([&] { return access(release, F_OK) == 0; }, role, release, deadline);
    }
    participant->delete_contained_entities();
    factory->delete_participant(participant);
    return rc;
}
