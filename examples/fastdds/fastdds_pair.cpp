// A Fast-DDS (2.9, Debian's libfastrtps) publisher and subscriber for ipclink's tests and
// docs: `fastdds_pair pub` writes FASTDDS_SAMPLES samples (sequence number and a text of
// FASTDDS_BYTES bytes) on topic "ipclink/frames" once a subscriber matched, reliably, and
// waits until they are acknowledged; `fastdds_pair sub` takes them, checks every sequence
// number and text, and exits 0 once all arrived. Both print the host id Fast-DDS gave
// their participant (the SHM transport only talks to participants of the same id), each
// participant they discover, and each match. The transports are whatever the default
// profile says: FASTRTPS_DEFAULT_PROFILES_FILE=/shm-only.xml for shared memory only.
//
// The sample type is written by hand (no fastddsgen): CDR encapsulation header, uint32,
// string.

#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>
#include <thread>

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

int main(int argc, char** argv) {
    if (argc != 2 || (std::strcmp(argv[1], "pub") != 0 && std::strcmp(argv[1], "sub") != 0)) {
        std::fprintf(stderr, "usage: fastdds_pair pub|sub\n");
        return 2;
    }
    const bool pub = std::strcmp(argv[1], "pub") == 0;
    const char* role = pub ? "pub" : "sub";
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
    Topic* topic =
        need(participant->create_topic("ipclink/frames", type.get_type_name(), TOPIC_QOS_DEFAULT), role, "topic");
    int rc = 0;
    if (pub) {
        Publisher* publisher = need(participant->create_publisher(PUBLISHER_QOS_DEFAULT), role, "publisher");
        DataWriter* writer = need(
            publisher->create_datawriter(topic, reliable_keep_all(DATAWRITER_QOS_DEFAULT), listener), role, "writer");
        PublicationMatchedStatus status;
        for (;;) {
            if (writer->get_publication_matched_status(status) != ReturnCode_t::RETCODE_OK) {
                std::printf("fastdds pub: cannot read the writer's status\n");
                return 1;
            }
            if (status.current_count > 0) {
                break;
            }
            if (std::chrono::steady_clock::now() > deadline) {
                std::printf("fastdds pub: no subscriber before the deadline\n");
                return 1;
            }
            std::this_thread::sleep_for(std::chrono::milliseconds(50));
        }
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
        Subscriber* subscriber = need(participant->create_subscriber(SUBSCRIBER_QOS_DEFAULT), role, "subscriber");
        DataReader* reader = need(
            subscriber->create_datareader(topic, reliable_keep_all(DATAREADER_QOS_DEFAULT), listener), role, "reader");
        uint32_t next = 0;
        Frame f;
        SampleInfo info;
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
                ++next;
            }
        }
        std::printf("fastdds sub: %u samples arrived in order\n", samples);
    }
    std::fflush(stdout);
    participant->delete_contained_entities();
    factory->delete_participant(participant);
    return rc;
}
